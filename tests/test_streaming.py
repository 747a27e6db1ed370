"""Chat completions through the gateway with the official openai SDK, billed exactly."""

from __future__ import annotations

import asyncio
import math
import time
from decimal import Decimal

import aiohttp
import openai
import pytest

from metering.tokens import TokenCounter
from tests.conftest import Harness
from tests.fake_upstream import DEFAULT_PIECES

# The rates of gpt-4o-mini in the test config, in credits per 1M tokens.
PRICE_IN, PRICE_OUT = Decimal("0.30"), Decimal("1.20")
COST_IN, COST_OUT = Decimal("0.15"), Decimal("0.60")
MESSAGES = [{"role": "user", "content": "Say hello."}]


def micro(tokens_in: int, tokens_out: int, rate_in: Decimal, rate_out: Decimal) -> int:
    """Independent of billing.rates: a rate per 1M tokens is micro-credits per token."""
    return math.ceil(tokens_in * rate_in + tokens_out * rate_out)


def client(harness: Harness, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=harness.base_url, api_key=key, max_retries=0)


async def test_async_sdk_stream_relays_text_and_hides_usage_it_did_not_ask_for(harness):
    account_id, key = await harness.account()
    stream = await client(harness, key).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(DEFAULT_PIECES)
    assert all(c.choices for c in chunks), "a usage-only chunk reached a caller who did not ask"
    assert all(c.usage is None for c in chunks)

    sent = harness.upstream.requests[-1]
    assert sent["model"] == "gpt-4o-mini-2024-07-18"
    assert sent["stream_options"] == {"include_usage": True}
    assert harness.upstream.headers[-1]["Authorization"] == "Bearer sk-fake"

    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["usage_source"] == "upstream"
    assert (charge["input_tokens"], charge["output_tokens"]) == (17, len(DEFAULT_PIECES))
    assert charge["credits"] == micro(17, len(DEFAULT_PIECES), PRICE_IN, PRICE_OUT)
    assert charge["provider_cost"] == micro(17, len(DEFAULT_PIECES), COST_IN, COST_OUT)
    assert charge["outcome"] == "ok"


async def test_sync_sdk_stream_sees_the_usage_chunk_it_asked_for(harness):
    _, key = await harness.account()

    def consume() -> list:
        sync = openai.OpenAI(base_url=harness.base_url, api_key=key, max_retries=0)
        stream = sync.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        return list(stream)

    chunks = await asyncio.to_thread(consume)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(DEFAULT_PIECES)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == 17
    assert chunks[-1].usage.completion_tokens == len(DEFAULT_PIECES)


async def test_sync_sdk_without_stream_gets_the_upstream_body(harness):
    account_id, key = await harness.account()

    def call():
        sync = openai.OpenAI(base_url=harness.base_url, api_key=key, max_retries=0)
        return sync.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    completion = await asyncio.to_thread(call)
    assert completion.choices[0].message.content == "".join(DEFAULT_PIECES)
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["credits"] == micro(17, len(DEFAULT_PIECES), PRICE_IN, PRICE_OUT)


@pytest.mark.parametrize("split,line_end", [(1, b"\n"), (7, b"\r\n"), (None, b"\r")])
@pytest.mark.parametrize("ask_usage", [True, False])
async def test_any_split_of_the_upstream_bytes_reaches_the_caller_unchanged(
    harness, split, line_end, ask_usage
):
    harness.upstream.split, harness.upstream.line_end = split, line_end
    account_id, key = await harness.account()
    request = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    if ask_usage:
        request["stream_options"] = {"include_usage": True}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{harness.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json=request,
        ) as response:
            body = await response.read()
    sent = bytes(harness.upstream.sent)
    if ask_usage:
        assert body == sent
    else:
        # Exactly the usage event that creditgate asked for is gone; all else is unchanged.
        separator = line_end * 2
        events = sent.split(separator)
        kept = [e for e in events if b'"choices":[]' not in e]
        assert len(kept) == len(events) - 1
        assert body == separator.join(kept)
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["usage_source"] == "upstream"
    assert charge["output_tokens"] == len(DEFAULT_PIECES)


async def test_mixed_requests_leave_exactly_the_computed_balance(harness):
    account_id, key = await harness.account("3")
    start, _ = await harness.balance(account_id)
    sdk = client(harness, key)
    expected = 0
    for number in range(8):
        harness.upstream.prompt_tokens = 100 + number * 37
        harness.upstream.completion_tokens = 3 + number * 11
        if number % 3 == 0:
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        else:
            stream = await sdk.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True
            )
            _ = [chunk async for chunk in stream]
        expected += micro(
            harness.upstream.prompt_tokens, harness.upstream.completion_tokens, PRICE_IN, PRICE_OUT
        )
    await harness.settled()
    balance, held = await harness.balance(account_id)
    assert balance == start - expected
    assert held == 0
    await harness.assert_invariant(account_id)


async def test_upstream_without_usage_is_billed_by_tiktoken_count(harness):
    harness.upstream.report_usage = False
    account_id, key = await harness.account()
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Count: één, twee, drie <|endoftext|>"},
    ]
    for model in ("gpt-4o-mini", "legacy"):
        stream = await client(harness, key).chat.completions.create(
            model=model, messages=messages, stream=True
        )
        _ = [chunk async for chunk in stream]
    await harness.settled()
    first, second = await harness.charges(account_id)

    # Computed here from tiktoken directly: OpenAI's chat accounting, 3 tokens a message
    # plus 3 for the reply, and the streamed text as one string.
    for charge, encoding, rates in (
        (first, "o200k_base", (PRICE_IN, PRICE_OUT)),
        (second, "cl100k_base", (Decimal("1.1"), Decimal("3.3"))),
    ):
        import tiktoken

        enc = tiktoken.get_encoding(encoding)
        prompt = 3 + sum(
            3 + len(enc.encode_ordinary(m["role"])) + len(enc.encode_ordinary(m["content"]))
            for m in messages
        )
        output = len(enc.encode_ordinary("".join(DEFAULT_PIECES)))
        assert charge["usage_source"] == "counted"
        assert (charge["input_tokens"], charge["output_tokens"]) == (prompt, output)
        assert charge["credits"] == micro(prompt, output, *rates)
        assert TokenCounter(encoding).count_messages(messages) == prompt


async def test_unaffordable_request_gets_402_with_purchase_link_and_upstream_sees_nothing(
    harness,
):
    account_id, key = await harness.account("0.5")
    with pytest.raises(openai.APIStatusError) as caught:
        await client(harness, key).chat.completions.create(model="pricey", messages=MESSAGES)
    assert caught.value.status_code == 402
    error = caught.value.body
    assert error["code"] == "insufficient_credits"
    assert error["purchase_link"] == (
        f"https://buy.stripe.com/test_abc?client_reference_id={account_id}"
    )
    assert harness.upstream.requests == []
    await harness.settled()
    assert await harness.charges(account_id) == []
    assert await harness.balance(account_id) == (500_000, 0)


async def test_client_disconnect_closes_upstream_releases_hold_and_charges_delivered(harness):
    harness.upstream.pieces = [f" word{i}" for i in range(200)]
    harness.upstream.delay = 0.02
    account_id, key = await harness.account()
    received = b""
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{harness.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
        )
        while received.count(b"word") < 10:
            received += await response.content.readany()
        left_at = time.monotonic()
        response.close()  # the caller goes away mid-stream
    for _ in range(100):
        if harness.upstream.disconnects:
            break
        await asyncio.sleep(0.01)
    assert harness.upstream.disconnects, "the upstream connection was not closed"
    assert harness.upstream.disconnects[0] - left_at < 1.0
    assert harness.upstream.chunks_sent < 100

    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["outcome"] == "client_closed"
    assert charge["usage_source"] == "counted"
    # What reached the caller is charged: at least what it read, at most what was sent.
    assert received.count(b"word") <= charge["output_tokens"] <= harness.upstream.chunks_sent * 2
    assert await harness.balance(account_id) == (10_000_000 - charge["credits"], 0)
    await harness.assert_invariant(account_id)


async def test_upstream_break_mid_stream_settles_delivered_and_sdk_raises(harness):
    harness.upstream.break_after = 5
    account_id, key = await harness.account()
    stream = await client(harness, key).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    text = ""
    with pytest.raises(openai.APIError, match="broke off"):
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
    assert text == "".join(DEFAULT_PIECES[:4])
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["outcome"] == "upstream_error"
    assert charge["usage_source"] == "counted"
    assert charge["output_tokens"] == TokenCounter("o200k_base").count(text)
    assert charge["credits"] > 0
    await harness.assert_invariant(account_id)


async def test_upstream_timeout_mid_stream_ends_the_stream_with_an_error(harness):
    harness.upstream.pieces = ["one", " two", " three"]
    harness.upstream.delay = 3  # longer than the provider's read_timeout of 2 s
    account_id, key = await harness.account()
    stream = await client(harness, key).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        _ = [chunk async for chunk in stream]
    assert caught.value.body["code"] in ("upstream_timeout", "upstream_error")
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["outcome"] in ("upstream_error",)
    assert await harness.balance(account_id) == (10_000_000 - charge["credits"], 0)


async def test_upstream_refusal_is_relayed_and_costs_nothing(harness):
    harness.upstream.status = 429
    harness.upstream.error_body = (
        b'{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit"}}'
    )
    account_id, key = await harness.account()
    with pytest.raises(openai.RateLimitError) as caught:
        await client(harness, key).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
    assert caught.value.body["code"] == "rate_limit"
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert (charge["outcome"], charge["http_status"], charge["credits"]) == (
        "upstream_error",
        429,
        0,
    )
    assert await harness.balance(account_id) == (10_000_000, 0)


async def test_demo_model_streams_and_bills_without_any_provider(harness):
    account_id, key = await harness.account()
    stream = await client(harness, key).chat.completions.create(
        model="demo", messages=MESSAGES, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text.startswith("Hello! This is the creditgate demo model.")
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["usage_source"] == "upstream"
    output = TokenCounter("cl100k_base").count(text)
    prompt = TokenCounter("cl100k_base").count_messages(MESSAGES)
    assert charge["credits"] == micro(prompt, output, Decimal(1), Decimal(2))
    assert harness.upstream.requests == []


def test_meter_keeps_choices_apart_and_counts_deltas_without_an_index():
    from metering.openai_chat import ChatStreamMeter

    meter = ChatStreamMeter(TokenCounter("o200k_base"))
    for data in (
        b'{"choices":[{"index":0,"delta":{"content":"Hello"}},{"index":1,"delta":{"content":"Hi"}}]}',
        b'{"choices":[{"delta":{"content":" world"}}]}',
        b'{"choices":[{"index":1,"delta":{"content":" there","role":"assistant"}}]}',
        b'{"choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":"{}"}}]}}]}',
        b"not json",
        b"[DONE]",
    ):
        assert meter.observe(data) is False
    counter = TokenCounter("o200k_base")
    expected = counter.count("Hello world{}") + counter.count("Hi there")
    assert meter.usage(5).output_tokens == expected
    assert meter.usage(5).source == "counted"
