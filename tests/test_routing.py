"""Deployments: failover before the first byte, never after it; cooldowns; one charge."""

from __future__ import annotations

import math
import random
from decimal import Decimal

import aiohttp
import openai
import orjson
import pytest

from metering.tokens import TokenCounter
from proxy.config import Deployment, ModelConfig, RoutingConfig
from proxy.routing import Router
from proxy.upstream import Operation, make_upstream
from tests.conftest import Harness
from tests.fake_upstream import DEFAULT_PIECES

MESSAGES = [{"role": "user", "content": "Say hello."}]
# gpt-4o's price, and its second deployment's own cost, per 1M tokens.
PRICE = (Decimal("3"), Decimal("12"))
BACKUP_COST = (Decimal("2"), Decimal("9"))


def micro(tokens_in: int, tokens_out: int, rates: tuple[Decimal, Decimal]) -> int:
    return math.ceil(tokens_in * rates[0] + tokens_out * rates[1])


def client(harness: Harness, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=harness.base_url, api_key=key, max_retries=0)


async def metric(harness: Harness, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(harness.server.make_url("/metrics")) as response:
            text = await response.text()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("failure", ["503", "429", "reset"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_failing_first_deployment_fails_over_and_charges_once(harness, failure, stream):
    account_id, key = await harness.account()
    if failure == "reset":
        harness.upstream.reset = True
    else:
        harness.upstream.status = int(failure)
        harness.upstream.error_body = b'{"error": {"message": "overloaded"}}'
    result = await client(harness, key).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=stream
    )
    if stream:
        text = "".join([c.choices[0].delta.content or "" async for c in result if c.choices])
    else:
        text = result.choices[0].message.content
    assert text == "".join(DEFAULT_PIECES)
    # Tried twice there (one retry), then served by the second deployment.
    assert [r["model"] for r in harness.upstream.requests] == ["gpt-4o-primary"] * 2
    assert [r["model"] for r in harness.backup.requests] == ["gpt-4o-secondary"]
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert (charge["deployment"], charge["provider"]) == ("backup/gpt-4o-secondary", "backup")
    assert charge["credits"] == micro(17, 9, PRICE)
    assert charge["provider_cost"] == micro(17, 9, BACKUP_COST)  # that deployment's cost
    await harness.assert_invariant(account_id)


async def test_a_stream_that_breaks_after_its_first_chunk_is_not_retried(harness):
    account_id, key = await harness.account()
    harness.upstream.break_after = 2  # the role chunk and "Hello", then the connection drops
    stream = await client(harness, key).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True
    )
    text = ""
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert text == "Hello"
    assert harness.backup.requests == []
    await harness.settled()
    [charge] = await harness.charges(account_id)
    counter = TokenCounter("o200k_base")
    delivered_in, delivered_out = counter.count_messages(MESSAGES), counter.count("Hello")
    assert (charge["outcome"], charge["usage_source"]) == ("upstream_error", "counted")
    assert (charge["input_tokens"], charge["output_tokens"]) == (delivered_in, delivered_out)
    assert charge["credits"] == micro(delivered_in, delivered_out, PRICE) > 0
    assert charge["deployment"] == "fake/gpt-4o-primary"


async def test_a_deployment_that_keeps_failing_cools_down(harness):
    _, key = await harness.account()
    harness.upstream.status = 500
    api = client(harness, key)
    await api.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert len(harness.upstream.requests) == 2  # two failures in a row: cooled down
    assert await metric(harness, "creditgate_upstream_cooldowns", provider="fake") == 1
    assert (
        await metric(
            harness, "creditgate_upstream_failures_total", provider="fake", reason="http_500"
        )
        == 2
    )
    for _ in range(3):
        await api.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert len(harness.upstream.requests) == 2  # skipped while cooling down
    assert len(harness.backup.requests) == 4


async def test_when_every_deployment_fails_the_last_refusal_reaches_the_caller(harness):
    account_id, key = await harness.account()
    for fake in (harness.upstream, harness.backup):
        fake.status = 503
        fake.error_body = b'{"error": {"message": "overloaded", "type": "server_error"}}'
    with pytest.raises(openai.APIStatusError) as caught:
        await client(harness, key).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.status_code == 503
    assert caught.value.body["message"] == "overloaded"
    assert len(harness.upstream.requests) == len(harness.backup.requests) == 2
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert (charge["credits"], charge["outcome"], charge["http_status"]) == (
        0,
        "upstream_error",
        503,
    )
    assert await harness.balance(account_id) == (10_000_000, 0)


async def test_when_nothing_answers_the_caller_gets_502(harness):
    _, key = await harness.account()
    harness.upstream.reset = harness.backup.reset = True
    with pytest.raises(openai.APIStatusError) as caught:
        await client(harness, key).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_unreachable"


async def test_a_client_error_is_not_retried(harness):
    _, key = await harness.account()
    harness.upstream.status = 400
    harness.upstream.error_body = orjson.dumps({"error": {"message": "bad", "code": "bad"}})
    with pytest.raises(openai.BadRequestError):
        await client(harness, key).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert len(harness.upstream.requests) == 1
    assert harness.backup.requests == []


async def test_anthropic_deployments_fail_over_too(harness):
    account_id, key = await harness.account()
    harness.upstream.status = 529
    harness.upstream.error_body = b'{"type": "error", "error": {"type": "overloaded_error"}}'
    async with aiohttp.ClientSession() as session:
        async with session.post(
            harness.server.make_url("/v1/messages"),
            json={"model": "claude-routed", "max_tokens": 50, "messages": MESSAGES},
            headers={"x-api-key": key},
        ) as response:
            assert response.status == 200
            body = await response.json()
    assert body["content"][0]["text"] == "".join(DEFAULT_PIECES)
    assert [r["model"] for r in harness.backup.requests] == ["claude-secondary"]
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["deployment"] == "anthropic-backup/claude-secondary"


async def test_a_deployment_past_its_read_timeout_fails_over(harness):
    account_id, key = await harness.account()
    harness.upstream.answer_delay = 1.0  # past the first deployment's 0.3 s read timeout
    completion = await client(harness, key).chat.completions.create(
        model="impatient", messages=MESSAGES
    )
    assert completion.choices[0].message.content == "".join(DEFAULT_PIECES)
    assert [r["model"] for r in harness.upstream.requests] == ["slow", "slow"]
    assert (
        await metric(
            harness, "creditgate_upstream_failures_total", provider="fake", reason="timeout"
        )
        == 2
    )
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["deployment"] == "backup/patient"


def test_deployments_are_drawn_first_in_proportion_to_their_weights(harness):
    config = harness.gateway.config
    model: ModelConfig = config.models["gpt-4o"]
    weighted = [
        Deployment(d.provider, d.upstream, None, weight, d.cost, 1, 1)
        for d, weight in zip(model.deployments, (3, 1), strict=True)
    ]
    model = ModelConfig(model.name, model.type, tuple(weighted), model.rate, model.encoding, 9)
    upstreams = {name: make_upstream(provider) for name, provider in config.providers.items()}
    router = Router(RoutingConfig(retries=0, retry_backoff=0, failures_before_cooldown=1,
                                  cooldown_seconds=60))  # fmt: skip
    random.seed(4)
    draws = 4000
    first = [router.targets(model, upstreams, [Operation.CHAT])[0] for _ in range(draws)]
    share = sum(t.deployment.provider == "fake" for t in first) / draws
    assert 0.72 < share < 0.78  # 3:1, drawn with a fixed seed
    # A cooled-down deployment goes last, whatever its weight.
    router.failed(first[0], "http_500")
    cooled = first[0].deployment.provider
    for _ in range(50):
        assert router.targets(model, upstreams, [Operation.CHAT])[-1].deployment.provider == cooled
