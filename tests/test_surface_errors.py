"""Bad input on every surface: its own API's error shape, nothing sent upstream, nothing
held or charged; and a model called through a surface that cannot serve it gets a 400."""

from __future__ import annotations

import aiohttp
import anthropic
import pytest

from tests.conftest import Harness

HI = [{"role": "user", "content": "hi"}]


async def post(harness: Harness, path: str, body: object, headers: dict[str, str]):
    async with aiohttp.ClientSession() as session:
        data = body if isinstance(body, bytes) else None
        async with session.post(
            harness.server.make_url(path),
            data=data,
            json=None if data is not None else body,
            headers=headers,
        ) as response:
            return response.status, await response.json(content_type=None)


def anthropic_shape(error: dict, kind: str) -> None:
    assert set(error) == {"type", "error"} and error["type"] == "error"
    assert error["error"]["type"] == kind and error["error"]["message"]


@pytest.mark.parametrize(
    "body,status,kind",
    [
        (b"{not json", 400, "invalid_request_error"),
        ({"model": "claude", "messages": HI}, 400, "invalid_request_error"),  # no max_tokens
        ({"model": "claude", "max_tokens": 0, "messages": HI}, 400, "invalid_request_error"),
        ({"model": "claude", "max_tokens": 9, "messages": []}, 400, "invalid_request_error"),
        ({"model": "claude", "max_tokens": 9, "messages": HI, "system": 3}, 400,
         "invalid_request_error"),
        ({"model": "claude", "max_tokens": 9, "messages": HI, "stream": 1}, 400,
         "invalid_request_error"),
        ({"model": "nope", "max_tokens": 9, "messages": HI}, 404, "not_found_error"),
        ({"model": "gpt-4o-mini", "max_tokens": 9, "messages": HI}, 400, "invalid_request_error"),
        ({"model": "embed", "max_tokens": 9, "messages": HI}, 400, "invalid_request_error"),
    ],
    ids=["invalid-json", "no-max-tokens", "zero-max-tokens", "no-messages", "bad-system",
         "bad-stream", "unknown-model", "openai-model", "embedding-model"],
)  # fmt: skip
async def test_messages_errors_are_in_anthropics_shape(harness, body, status, kind):
    account_id, key = await harness.account()
    got, error = await post(harness, "/v1/messages", body, {"x-api-key": key})
    assert got == status
    anthropic_shape(error, kind)
    assert harness.upstream.requests == []
    assert await harness.balance(account_id) == (10_000_000, 0)


async def test_messages_without_a_key_and_unknown_routes_answer_in_anthropics_shape(harness):
    got, error = await post(harness, "/v1/messages", {"model": "claude"}, {})
    assert got == 401
    anthropic_shape(error, "authentication_error")
    async with aiohttp.ClientSession() as session:
        async with session.get(harness.server.make_url("/v1/messages")) as response:
            assert response.status == 405
            anthropic_shape(await response.json(), "invalid_request_error")


async def test_anthropic_sdk_raises_its_own_errors(harness):
    _account_id, key = await harness.account(credits="0.0001")
    api = anthropic.AsyncAnthropic(
        base_url=str(harness.server.make_url("")), api_key=key, max_retries=0
    )
    with pytest.raises(anthropic.NotFoundError):
        await api.messages.create(model="nope", max_tokens=9, messages=HI)
    with pytest.raises(anthropic.APIStatusError) as caught:
        await api.messages.create(model="claude", max_tokens=1000, messages=HI)
    assert caught.value.status_code == 402
    assert caught.value.body["error"]["type"] == "billing_error"
    assert caught.value.body["error"]["purchase_link"].startswith("https://buy.stripe.com/")
    assert harness.upstream.requests == []


async def test_a_messages_stream_out_of_credit_ends_with_an_error_the_sdk_raises(harness):
    # 0.001 credits are 1,000 micro-credits: the hold for max_tokens 20 (about 400 at 20
    # per output token) fits; the 1,200 words the upstream sends outgrow it and the account.
    account_id, key = await harness.account(credits="0.001")
    harness.upstream.pieces = ["word " * 40] * 30
    api = anthropic.AsyncAnthropic(
        base_url=str(harness.server.make_url("")), api_key=key, max_retries=0
    )
    text = ""
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with api.messages.stream(model="claude", max_tokens=20, messages=HI) as stream:
            async for piece in stream.text_stream:
                text += piece
    assert "ran out of credits" in str(caught.value)
    assert 0 < len(text) < len("word " * 40 * 30)
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["outcome"] == "insufficient_credits"
    balance, held = await harness.balance(account_id)
    assert held == 0 and balance >= 0
    await harness.assert_invariant(account_id)


@pytest.mark.parametrize(
    "path,body,status,code",
    [
        ("/v1/responses", {"model": "gpt-4o"}, 400, "invalid_request"),
        ("/v1/responses", {"model": "gpt-4o", "input": 5}, 400, "invalid_request"),
        ("/v1/responses", {"model": "gpt-4o", "input": "x", "instructions": []}, 400,
         "invalid_request"),
        ("/v1/responses", {"model": "gpt-4o", "input": "x", "background": True}, 400,
         "invalid_request"),
        ("/v1/responses", {"model": "gpt-4o", "input": "x", "max_output_tokens": "9"}, 400,
         "invalid_request"),
        ("/v1/responses", {"model": "claude", "input": "x"}, 400, "unsupported_endpoint"),
        ("/v1/responses", {"model": "demo", "input": "x"}, 400, "unsupported_endpoint"),
        ("/v1/responses", {"model": "embed", "input": "x"}, 400, "unsupported_model"),
        ("/v1/embeddings", {"model": "embed"}, 400, "invalid_request"),
        ("/v1/embeddings", {"model": "embed", "input": ""}, 400, "invalid_request"),
        ("/v1/embeddings", {"model": "embed", "input": [1, "a"]}, 400, "invalid_request"),
        ("/v1/embeddings", {"model": "gpt-4o", "input": "x"}, 400, "unsupported_model"),
        ("/v1/embeddings", {"model": "nope", "input": "x"}, 404, "model_not_found"),
        ("/v1/images/generations", {"model": "image"}, 400, "invalid_request"),
        ("/v1/images/generations", {"model": "image", "prompt": "x", "n": 0}, 400,
         "invalid_request"),
        ("/v1/images/generations", {"model": "image", "prompt": "x", "n": 11}, 400,
         "invalid_request"),
        ("/v1/images/generations", {"model": "image", "prompt": "x", "size": 5}, 400,
         "invalid_request"),
        ("/v1/images/generations", {"model": "gpt-4o", "prompt": "x"}, 400, "unsupported_model"),
        ("/v1/chat/completions", {"model": "embed", "messages": HI}, 400, "unsupported_model"),
        ("/v1/chat/completions", {"model": "image", "messages": HI}, 400, "unsupported_model"),
        ("/v1/chat/completions", {"model": "claude", "messages": HI, "n": 2}, 400,
         "invalid_request"),
        ("/v1/chat/completions", {"model": "claude", "messages": [{"role": "robot"}]}, 400,
         "invalid_request"),
        ("/v1/chat/completions", {"model": "claude", "messages": HI, "tools": [{}]}, 400,
         "invalid_request"),
        ("/v1/chat/completions", {"model": "claude", "messages": HI,
         "response_format": {"type": "json_object"}}, 400, "invalid_request"),
        ("/v1/chat/completions", {"model": "claude", "messages": HI, "logprobs": True}, 400,
         "invalid_request"),
    ],
)  # fmt: skip
async def test_openai_surfaces_reject_bad_input_in_openais_shape(harness, path, body, status, code):
    account_id, key = await harness.account()
    got, error = await post(harness, path, body, {"Authorization": f"Bearer {key}"})
    assert got == status
    assert set(error) == {"error"}
    assert error["error"]["code"] == code and error["error"]["message"]
    assert harness.upstream.requests == []
    assert await harness.balance(account_id) == (10_000_000, 0)


async def test_a_model_on_the_wrong_surface_is_told_where_to_go(harness):
    _, key = await harness.account()
    _, error = await post(
        harness, "/v1/chat/completions", {"model": "embed", "messages": HI},
        {"Authorization": f"Bearer {key}"},
    )  # fmt: skip
    assert "/v1/embeddings" in error["error"]["message"]
    _, error = await post(
        harness, "/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 5, "messages": HI},
        {"x-api-key": key},
    )  # fmt: skip
    assert "openai" in error["error"]["message"] and "/v1/messages" in error["error"]["message"]


async def test_neutral_chat_parameters_reach_anthropic_without_an_error(harness):
    _, key = await harness.account()
    got, _ = await post(
        harness,
        "/v1/chat/completions",
        {"model": "claude", "messages": HI, "seed": 7, "presence_penalty": 0,
         "logprobs": False, "response_format": {"type": "text"}},
        {"Authorization": f"Bearer {key}"},
    )  # fmt: skip
    assert got == 200
    assert "seed" not in harness.upstream.requests[-1]
