"""Every surface through the official SDKs, each billed by its own rate type; Anthropic
natively and behind Chat Completions; Azure URLs; credentials taking turns; /v1/models."""

from __future__ import annotations

import math
from decimal import Decimal

import aiohttp
import anthropic
import openai
import orjson
import pytest

from metering.tokens import TokenCounter
from tests.conftest import Harness
from tests.fake_upstream import DEFAULT_PIECES

D = Decimal
MESSAGES = [{"role": "user", "content": "Say hello."}]


def micro(*parts: tuple[int, str]) -> int:
    """Independent of billing.rates: (tokens, credits per 1M tokens) summed, rounded up once."""
    return math.ceil(sum(count * D(rate) for count, rate in parts))


def claude_client(harness: Harness, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=str(harness.server.make_url("")), api_key=key, max_retries=0
    )


def openai_client(harness: Harness, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=harness.base_url, api_key=key, max_retries=0)


def cache_usage(harness: Harness) -> int:
    """Anthropic usage with cache reads and writes, and two cumulative output counts."""
    upstream = harness.upstream
    upstream.prompt_tokens, upstream.cache_read, upstream.cache_write = 25, 100, 50
    upstream.output_counts = [3, 9]  # cumulative: 9 in all, never 12
    return micro((25, "4"), (100, "0.4"), (50, "5"), (9, "20"))


async def test_anthropic_sdk_streams_messages_billed_by_the_last_output_count(harness):
    account_id, key = await harness.account()
    expected = cache_usage(harness)
    async with claude_client(harness, key).messages.stream(
        model="claude",
        max_tokens=100,
        messages=MESSAGES,
        extra_headers={
            "anthropic-beta": "prompt-caching-2024-07-31",
            "anthropic-version": "2023-01-01",
        },
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "".join(DEFAULT_PIECES)
    assert final.usage.output_tokens == 9
    sent = harness.upstream.headers[-1]
    assert sent["x-api-key"] == "sk-ant-fake"
    assert sent["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert sent["anthropic-version"] == "2023-01-01"  # the caller's, passed through
    assert harness.upstream.requests[-1]["model"] == "claude-sonnet-4-5"
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["credits"] == expected
    assert charge["provider_cost"] == micro((25, "3"), (100, "0.3"), (50, "3.75"), (9, "15"))
    assert (charge["input_tokens"], charge["cached_tokens"], charge["cache_write_tokens"]) == (
        175,
        100,
        50,
    )
    assert (charge["output_tokens"], charge["usage_source"]) == (9, "upstream")
    assert (charge["endpoint"], charge["deployment"]) == (
        "messages",
        "anthropic-fake/claude-sonnet-4-5",
    )
    assert orjson.loads(charge["prices"])["cache_write"] == "5"
    await harness.assert_invariant(account_id)


async def test_anthropic_sdk_without_stream_gets_the_message_and_pays_its_usage(harness):
    account_id, key = await harness.account()
    expected = cache_usage(harness)
    message = await claude_client(harness, key).messages.create(
        model="claude", max_tokens=100, messages=MESSAGES
    )
    assert message.content[0].text == "".join(DEFAULT_PIECES)
    assert message.usage.cache_read_input_tokens == 100
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["credits"] == expected
    assert charge["outcome"] == "ok"


async def test_messages_accepts_a_bearer_key_and_prices_the_pro_group(harness):
    account_id, key = await harness.account(group="pro")
    harness.upstream.output_counts = [9]
    async with aiohttp.ClientSession() as session:
        async with session.post(
            harness.server.make_url("/v1/messages"),
            json={"model": "claude", "max_tokens": 50, "messages": MESSAGES},
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            assert response.status == 200
    # No anthropic-version from the caller: the provider's configured one is sent.
    assert harness.upstream.headers[-1]["anthropic-version"] == "2023-06-01"
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["credits"] == micro((17, "3.5"), (9, "18"))


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
TOOL_INPUT = {"city": "Paris", "unit": "celsius", "days": [1, 2, 3]}


def tool_reply(harness: Harness) -> None:
    harness.upstream.pieces = ["Let me", " check."]
    harness.upstream.blocks = [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": TOOL_INPUT},
    ]


async def test_openai_sdk_streams_a_tool_call_from_an_anthropic_model(harness):
    account_id, key = await harness.account()
    tool_reply(harness)
    harness.upstream.output_counts = [4, 9]  # two usage deltas: still one finish
    stream = await openai_client(harness, key).chat.completions.create(
        model="claude",
        messages=[{"role": "system", "content": "Be brief."}, *MESSAGES],
        tools=TOOLS,
        tool_choice="required",
        max_tokens=300,
        stop=["END"],
        temperature=0.5,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, name, arguments, finishes, usage = "", "", "", [], None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or ():
                assert call.index == 0
                name += call.function.name or ""
                arguments += call.function.arguments or ""
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert text == "Let me check."
    assert name == "get_weather"
    assert orjson.loads(arguments) == TOOL_INPUT
    assert finishes == ["tool_calls"]
    assert usage.prompt_tokens == 17 and usage.completion_tokens == 9

    sent = harness.upstream.requests[-1]
    assert sent["system"] == "Be brief."
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Say hello."}]}
    ]
    assert sent["tools"][0]["name"] == "get_weather"
    assert sent["tools"][0]["input_schema"] == TOOLS[0]["function"]["parameters"]
    assert sent["tool_choice"] == {"type": "any"}
    assert (sent["max_tokens"], sent["stop_sequences"], sent["temperature"]) == (300, ["END"], 0.5)
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["credits"] == micro((17, "4"), (9, "20"))
    assert (charge["endpoint"], charge["usage_source"]) == ("chat.completions", "upstream")


async def test_openai_sdk_gets_a_whole_chat_completion_from_an_anthropic_model(harness):
    account_id, key = await harness.account()
    tool_reply(harness)
    completion = await openai_client(harness, key).chat.completions.create(
        model="claude",
        messages=[
            *MESSAGES,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Snow."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "And this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                ],
            },
        ],
        tools=TOOLS,
    )
    choice = completion.choices[0]
    assert choice.message.content == "Let me check."
    [call] = choice.message.tool_calls
    assert (call.id, call.function.name) == ("toolu_01", "get_weather")
    assert orjson.loads(call.function.arguments) == TOOL_INPUT
    assert choice.finish_reason == "tool_calls"
    sent = harness.upstream.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}
    ]
    assert sent[2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "call_1",
        "content": "Snow.",
    }
    assert sent[2]["content"][2] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
    }
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["credits"] == micro((17, "4"), (9, "20"))


async def test_an_error_inside_a_messages_stream_reaches_the_sdk_and_the_charge(harness):
    account_id, key = await harness.account()
    harness.upstream.error_after = 5  # message_start, ping, block start, "Hello", " from"
    text = ""
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        async with claude_client(harness, key).messages.stream(
            model="claude", max_tokens=100, messages=MESSAGES
        ) as stream:
            async for piece in stream.text_stream:
                text += piece
    assert text == "Hello from"
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert (charge["outcome"], charge["usage_source"]) == ("upstream_error", "counted")
    counted = TokenCounter("cl100k_base").count("Hello from")
    assert charge["output_tokens"] == counted
    assert charge["input_tokens"] == 17  # message_start's count, the provider's
    assert charge["credits"] == micro((17, "4"), (counted, "20"))


async def test_an_error_inside_an_anthropic_stream_reaches_a_chat_caller(harness):
    account_id, key = await harness.account()
    harness.upstream.error_after = 4
    stream = await openai_client(harness, key).chat.completions.create(
        model="claude", messages=MESSAGES, stream=True
    )
    with pytest.raises(openai.APIError, match="Overloaded"):
        async for _ in stream:
            pass
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["outcome"] == "upstream_error"


async def test_anthropic_refusal_reaches_a_chat_caller_as_an_openai_error(harness):
    _, key = await harness.account()
    harness.upstream.status = 400
    harness.upstream.error_body = orjson.dumps(
        {"type": "error", "error": {"type": "invalid_request_error", "message": "bad image"}}
    )
    try:
        await openai_client(harness, key).chat.completions.create(model="claude", messages=MESSAGES)
    except openai.BadRequestError as err:
        assert "bad image" in err.message
        assert err.body["code"] == "invalid_request_error"
    else:
        raise AssertionError("expected a 400")


def responses_usage(harness: Harness) -> int:
    upstream = harness.upstream
    upstream.prompt_tokens, upstream.cached_tokens, upstream.reasoning_tokens = 40, 10, 4
    # gpt-4o: input 3, cached input 1.5, output 12, reasoning 14.
    return micro((30, "3"), (10, "1.5"), (5, "12"), (4, "14"))


async def test_responses_api_streams_and_bills_cached_and_reasoning_tokens(harness):
    account_id, key = await harness.account()
    expected = responses_usage(harness)
    stream = await openai_client(harness, key).responses.create(
        model="gpt-4o", input="Say hello.", stream=True
    )
    events = [event async for event in stream]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "".join(DEFAULT_PIECES)
    assert events[-1].type == "response.completed"
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["credits"] == expected
    # The cost side: the model's cost (this deployment does not override it).
    assert charge["provider_cost"] == micro((30, "2.5"), (10, "1.25"), (5, "10"), (4, "10"))
    assert (charge["cached_tokens"], charge["reasoning_tokens"]) == (10, 4)
    assert (charge["endpoint"], charge["deployment"]) == ("responses", "fake/gpt-4o-primary")
    assert harness.upstream.requests[-1]["model"] == "gpt-4o-primary"


async def test_responses_api_without_stream(harness):
    account_id, key = await harness.account()
    expected = responses_usage(harness)
    response = await openai_client(harness, key).responses.create(model="gpt-4o", input="Hi")
    assert response.output_text == "".join(DEFAULT_PIECES)
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["credits"] == expected


async def test_chat_prices_cached_and_reasoning_tokens_by_their_own_rates(harness):
    account_id, key = await harness.account()
    expected = responses_usage(harness)
    await openai_client(harness, key).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert charge["credits"] == expected


async def test_embeddings_are_billed_by_input_tokens(harness):
    account_id, key = await harness.account()
    harness.upstream.prompt_tokens = 1000
    result = await openai_client(harness, key).embeddings.create(
        model="embed", input=["first text", "second"]
    )
    assert len(result.data) == 2
    harness.upstream.report_usage = False  # then counted with tiktoken
    await openai_client(harness, key).embeddings.create(model="embed", input="count me, please")
    await harness.settled()
    reported, counted = await harness.charges(account_id)
    assert (reported["credits"], reported["input_tokens"], reported["output_tokens"]) == (
        30,
        1000,
        0,
    )
    assert reported["provider_cost"] == 20
    tokens = TokenCounter("cl100k_base").count("count me, please")
    assert (counted["input_tokens"], counted["usage_source"]) == (tokens, "counted")
    assert counted["credits"] == micro((tokens, "0.03"))


async def test_images_are_billed_per_image_by_size_and_quality(harness):
    account_id, key = await harness.account()
    client = openai_client(harness, key)
    result = await client.images.generate(model="image", prompt="a cat", n=3, size="1024x1536")
    assert len(result.data) == 3
    await client.images.generate(model="image", prompt="a cat", size="1024x1536", quality="high")
    await client.images.generate(model="image", prompt="a dog")
    await harness.settled()
    by_size, high, default = await harness.charges(account_id)
    assert (by_size["images"], by_size["credits"], by_size["provider_cost"]) == (
        3,
        240_000,
        120_000,
    )
    assert (high["images"], high["credits"]) == (1, 250_000)
    assert (default["images"], default["credits"]) == (1, 50_000)
    assert orjson.loads(by_size["prices"]) == {"image": "0.08"}
    await harness.assert_invariant(account_id)


async def test_a_streamed_image_generation_is_billed_per_completed_image(harness):
    account_id, key = await harness.account()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            harness.base_url + "/images/generations",
            json={"model": "image", "prompt": "a cat", "n": 2, "stream": True},
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            body = await response.read()
    assert body == bytes(harness.upstream.sent)  # passed through untouched
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert (charge["images"], charge["credits"], charge["outcome"]) == (2, 100_000, "ok")


async def test_images_hold_every_image_asked_for_before_the_call(harness):
    account_id, key = await harness.account(credits="0.1")
    try:
        await openai_client(harness, key).images.generate(model="image", prompt="cats", n=3)
    except openai.APIStatusError as err:
        assert err.status_code == 402
    else:
        raise AssertionError("expected 402: three images at 0.05 are more than 0.1 credits")
    assert harness.upstream.requests == []
    await openai_client(harness, key).images.generate(model="image", prompt="cats", n=2)
    await harness.settled()
    assert await harness.balance(account_id) == (0, 0)


async def test_azure_deployment_url_api_version_and_key_header(harness):
    account_id, key = await harness.account()
    await openai_client(harness, key).chat.completions.create(model="on-azure", messages=MESSAGES)
    assert harness.upstream.paths[-1] == (
        "/openai/deployments/my-gpt4o-deployment/chat/completions?api-version=2024-10-21"
    )
    headers = harness.upstream.headers[-1]
    assert headers["api-key"] == "az-key" and "Authorization" not in headers
    await harness.settled()
    [charge] = await harness.charges(account_id)
    assert (charge["provider"], charge["credits"]) == ("azure-fake", micro((17, "3"), (9, "12")))


async def test_azure_serves_the_responses_api_at_its_own_url(harness):
    _, key = await harness.account()
    await openai_client(harness, key).responses.create(model="on-azure", input="Hi")
    assert harness.upstream.paths[-1] == "/openai/responses?api-version=2024-10-21"
    assert harness.upstream.requests[-1]["model"] == "my-gpt4o-deployment"


async def test_a_providers_credentials_take_turns(harness):
    _, key = await harness.account()
    client = openai_client(harness, key)
    for _ in range(4):
        await client.chat.completions.create(model="spread", messages=MESSAGES)
    used = [headers["Authorization"] for headers in harness.upstream.headers]
    assert sorted(used) == ["Bearer sk-one", "Bearer sk-one", "Bearer sk-two", "Bearer sk-two"]


async def test_models_lists_what_the_caller_may_use_with_its_groups_prices(harness):
    _, key = await harness.account(group="pro")
    page = await openai_client(harness, key).models.list()
    models = {model.id: model.model_dump() for model in page.data}
    assert "offline" not in models  # its provider has no key
    assert models["claude"]["pricing"]["input"] == "3.5"  # the pro group's price
    # A group's table stands alone: its unlisted cache rate defaults to its own input rate.
    assert models["claude"]["pricing"]["cached_input"] == "3.5"
    assert models["image"]["pricing"] == {
        "unit": "credits per image",
        "group": "pro",
        "image": "0.05",
        "sizes": {"1024x1536": "0.08"},
        "quality": {"high": {"1024x1536": "0.25"}},
    }
    assert models["embed"]["type"] == "embedding"
