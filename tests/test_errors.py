"""Bad requests: the right 4xx in OpenAI's error shape, nothing sent upstream, nothing charged."""

from __future__ import annotations

import aiohttp
import asyncpg
import openai
import pytest

MESSAGES = [{"role": "user", "content": "hi"}]


async def _post(harness, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{harness.base_url}/chat/completions", data=body, headers=headers
        ) as response:
            return response.status, await response.json(content_type=None)


@pytest.mark.parametrize(
    "body,status,code",
    [
        (b"{not json", 400, "invalid_request"),
        (b"[1, 2]", 400, "invalid_request"),
        (b'"text"', 400, "invalid_request"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "invalid_request"),
        (b'{"model": "gpt-4o-mini"}', 400, "invalid_request"),
        (b'{"model": "gpt-4o-mini", "messages": []}', 400, "invalid_request"),
        (b'{"model": "gpt-4o-mini", "messages": "hi"}', 400, "invalid_request"),
        (b'{"model": "gpt-4o-mini", "messages": [{}], "stream": "yes"}', 400, "invalid_request"),
        (b'{"model": "gpt-4o-mini", "messages": [{}], "max_tokens": -1}', 400, "invalid_request"),
        (b'{"model": "no-such-model", "messages": [{}]}', 404, "model_not_found"),
        (b'{"model": "offline", "messages": [{}]}', 503, "provider_unavailable"),
        (b"{" + b'"pad": "' + b"x" * (1024 * 1024) + b'"}', 413, "request_too_large"),
    ],
    ids=[
        "invalid-json",
        "array",
        "string",
        "no-model",
        "no-messages",
        "empty-messages",
        "messages-not-list",
        "stream-not-bool",
        "bad-max-tokens",
        "unknown-model",
        "provider-without-key",
        "body-over-limit",
    ],
)
async def test_bad_body(harness, body, status, code):
    account_id, key = await harness.account()
    got_status, error = await _post(
        harness, body, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    )
    assert got_status == status
    assert set(error) == {"error"}
    assert error["error"]["code"] == code
    assert error["error"]["message"]
    assert error["error"]["type"]
    assert harness.upstream.requests == []
    await harness.settled()
    assert await harness.charges(account_id) == []
    assert await harness.balance(account_id) == (10_000_000, 0)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer cg-not-a-key"}, {"Authorization": "Basic abc"}],
    ids=["no-key", "unknown-key", "wrong-scheme"],
)
async def test_bad_key_is_401(harness, headers):
    status, error = await _post(
        harness,
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}',
        headers,
    )
    assert status == 401
    assert error["error"]["code"] == "invalid_api_key"
    assert harness.upstream.requests == []


async def test_sdk_sees_typed_errors(harness):
    _, key = await harness.account()
    sdk = openai.AsyncOpenAI(base_url=harness.base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        await sdk.chat.completions.create(model="nope", messages=MESSAGES)
    bad = openai.AsyncOpenAI(base_url=harness.base_url, api_key="cg-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await bad.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


async def test_unknown_route_and_method_are_openai_shaped(harness):
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{harness.base_url}/nothing") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "not_found"
        async with session.get(f"{harness.base_url}/chat/completions") as response:
            assert response.status == 405
            assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_models_lists_served_models_and_healthz_answers(harness):
    _, key = await harness.account()
    sdk = openai.AsyncOpenAI(base_url=harness.base_url, api_key=key, max_retries=0)
    models = {model.id async for model in sdk.models.list()}
    assert models == set(harness.gateway.config.models) - {"offline"}  # "offline": no key
    async with aiohttp.ClientSession() as session:
        async with session.get(str(harness.server.make_url("/healthz"))) as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}


async def test_unreachable_database_is_503_and_nothing_goes_upstream(harness):
    _, key = await harness.account()
    gateway = harness.gateway
    dead = await asyncpg.create_pool("postgresql://postgres@127.0.0.1:1/none", min_size=0)
    working = gateway.ledger.pool
    sdk = openai.AsyncOpenAI(base_url=harness.base_url, api_key=key, max_retries=0)
    await sdk.models.list()  # the key is now cached: the hold is what meets the outage
    gateway.ledger.pool = gateway.accounts.pool = dead
    try:
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert caught.value.status_code == 503
        assert caught.value.body["code"] == "ledger_unavailable"
        other = openai.AsyncOpenAI(base_url=harness.base_url, api_key="cg-x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as caught:
            await other.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert caught.value.status_code == 503
    finally:
        gateway.ledger.pool = gateway.accounts.pool = working
        await dead.close()
    assert harness.upstream.requests == []


async def test_readyz_reports_the_database(harness):
    url = str(harness.server.make_url("/readyz"))
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ready"
        gateway = harness.gateway
        dead = await asyncpg.create_pool("postgresql://postgres@127.0.0.1:1/none", min_size=0)
        working, gateway.pool = gateway.pool, dead
        try:
            async with session.get(url) as response:
                assert response.status == 503
                assert (await response.json())["status"] == "unavailable"
        finally:
            gateway.pool = working
            await dead.close()
