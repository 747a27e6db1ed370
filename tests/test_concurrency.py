"""Many streams on one account: holds keep it from being overdrawn, and all are settled."""

from __future__ import annotations

import asyncio
import math
from decimal import Decimal

import aiohttp
import openai
import pytest

from metering.tokens import TokenCounter

MESSAGES = [{"role": "user", "content": "Tell me a story."}]
PRICE_IN, PRICE_OUT = Decimal("0.30"), Decimal("1.20")


async def _watch_balance(harness, account_id: int, lowest: list[int], stop: asyncio.Event):
    while not stop.is_set():
        balance, _ = await harness.balance(account_id)
        lowest[0] = min(lowest[0], balance)
        await asyncio.sleep(0.005)


async def test_200_streams_on_a_balance_that_covers_20(harness):
    output_tokens = 10
    counter = TokenCounter("o200k_base")
    assert counter.count(" hello") == 1
    harness.upstream.pieces = [" hello"] * output_tokens
    harness.upstream.delay = 0.01
    # The fake reports what the gateway estimates, so each stream costs exactly its hold.
    prompt = counter.count_messages(MESSAGES)
    harness.upstream.prompt_tokens = prompt
    per_stream = math.ceil(prompt * PRICE_IN + output_tokens * PRICE_OUT)
    account_id, key = await harness.account("0")
    await harness.ledger.grant(account_id, 20 * per_stream + per_stream // 2, "admin")
    start, _ = await harness.balance(account_id)

    async def one(session: aiohttp.ClientSession) -> int:
        async with session.post(
            f"{harness.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "model": "gpt-4o-mini",
                "messages": MESSAGES,
                "stream": True,
                "max_tokens": output_tokens,
            },
        ) as response:
            body = await response.read()
            if response.status == 200:
                assert body.endswith(b"data: [DONE]\n\n")
            return response.status

    lowest, stop = [start], asyncio.Event()
    watcher = asyncio.create_task(_watch_balance(harness, account_id, lowest, stop))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        statuses = await asyncio.gather(*(one(session) for _ in range(200)))
    stop.set()
    await watcher
    await harness.settled()

    served = statuses.count(200)
    assert served == 20
    assert statuses.count(402) == 180
    assert len(harness.upstream.requests) == 20
    assert lowest[0] >= 0
    balance, held = await harness.balance(account_id)
    assert balance == start - served * per_stream
    assert held == 0
    assert (
        await harness.ledger.pool.fetchval(
            "SELECT count(*) FROM holds WHERE account_id = $1", account_id
        )
        == 0
    )
    charges = await harness.charges(account_id)
    assert len(charges) == served
    assert {c["credits"] for c in charges} == {per_stream}
    await harness.assert_invariant(account_id)


@pytest.mark.parametrize("burst", [False, True], ids=["event-by-event", "one-burst"])
@pytest.mark.parametrize("ask_usage", [False, True], ids=["filtered", "pass-through"])
async def test_stream_outgrowing_its_hold_is_extended_then_stopped_at_the_balance(
    harness, burst, ask_usage
):
    # The upstream ignores max_tokens and runs on: the gateway extends the hold while the
    # balance allows, then ends the stream with an error the SDK raises, even when the
    # whole stream arrives in one read.
    harness.upstream.pieces = [" w"] * 3000
    harness.upstream.report_usage = False
    harness.upstream.burst = burst
    counter = TokenCounter("o200k_base")
    prompt = counter.count_messages(MESSAGES)
    chunk_cost = math.ceil(counter.count(" w") * PRICE_OUT)
    account_id, key = await harness.account("0")
    credit = math.ceil(prompt * PRICE_IN + 700 * PRICE_OUT)  # about 700 tokens' worth
    await harness.ledger.grant(account_id, credit, "admin")

    client = openai.AsyncOpenAI(base_url=harness.base_url, api_key=key, max_retries=0)
    options = {"stream_options": {"include_usage": True}} if ask_usage else {}
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=10, **options
    )
    received = 0
    try:
        async for chunk in stream:
            received += sum(1 for c in chunk.choices if c.delta.content)
        raise AssertionError("the stream was not stopped")
    except openai.APIError as err:
        assert err.body["code"] == "insufficient_credits"
    assert 10 < received < 3000

    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["outcome"] == "insufficient_credits"
    assert charge["output_tokens"] == received
    balance, held = await harness.balance(account_id)
    assert held == 0
    assert -chunk_cost <= balance < credit
    await harness.assert_invariant(account_id)
