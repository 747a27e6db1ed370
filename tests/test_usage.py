"""Usage read from each API's stream events and bodies, without a server."""

from __future__ import annotations

import orjson

from metering.anthropic import AnthropicStreamMeter, usage_from_message
from metering.openai_media import embedding_input_tokens, usage_from_images
from metering.openai_responses import ResponsesStreamMeter
from metering.tokens import TokenCounter
from metering.usage import Usage, UsageSource

COUNTER = TokenCounter("cl100k_base")


def feed(meter, *events: dict) -> None:
    for event in events:
        assert meter.observe(orjson.dumps(event)) is False  # nothing is hidden


START = {
    "type": "message_start",
    "message": {"usage": {"input_tokens": 10, "cache_read_input_tokens": 4,
                          "cache_creation_input_tokens": 2, "output_tokens": 1}},
}  # fmt: skip


def text_delta(text: str) -> dict:
    return {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": text},
    }


def test_anthropic_output_tokens_are_cumulative_and_input_folds_in_the_cache():
    meter = AnthropicStreamMeter(COUNTER)
    feed(
        meter,
        START,
        text_delta("Hello there"),
        {"type": "message_delta", "usage": {"output_tokens": 5}},
        {"type": "message_delta", "usage": {"output_tokens": 12}},
    )
    assert meter.usage(99) == Usage(
        input_tokens=16, output_tokens=12, cached_tokens=4, cache_write_tokens=2,
        source=UsageSource.UPSTREAM,
    )  # fmt: skip


def test_anthropic_stream_cut_before_its_final_count_is_counted():
    meter = AnthropicStreamMeter(COUNTER)
    feed(meter, START, text_delta("Hello there"), text_delta(", friend"))
    usage = meter.usage(99)
    assert (usage.input_tokens, usage.cached_tokens) == (16, 4)  # the provider's input
    assert usage.output_tokens == COUNTER.count("Hello there, friend")
    assert usage.source is UsageSource.COUNTED
    assert meter.output_tokens >= usage.output_tokens  # the running estimate never lags
    nothing = AnthropicStreamMeter(COUNTER)
    assert nothing.usage(7) == Usage(input_tokens=7, source=UsageSource.COUNTED)


def test_anthropic_message_without_usage_counts_text_and_tool_input():
    body = {"content": [{"type": "text", "text": "Hi"},
                        {"type": "tool_use", "name": "f", "input": {"a": 1}}]}  # fmt: skip
    usage = usage_from_message(body, COUNTER, 5)
    assert usage.output_tokens == COUNTER.count('Hif{"a":1}')
    assert usage.input_tokens == 5


def test_responses_usage_comes_from_completed_incomplete_or_failed():
    for final in ("response.completed", "response.incomplete", "response.failed"):
        meter = ResponsesStreamMeter(COUNTER)
        usage = {"input_tokens": 8, "output_tokens": 3,
                 "input_tokens_details": {"cached_tokens": 2},
                 "output_tokens_details": {"reasoning_tokens": 1}}  # fmt: skip
        feed(
            meter,
            {"type": "response.output_text.delta", "delta": "Hi there"},
            {"type": final, "response": {"usage": usage}},
        )
        assert meter.usage(50) == Usage(8, 3, 2, 1, source=UsageSource.UPSTREAM), final
    cut = ResponsesStreamMeter(COUNTER)
    feed(cut, {"type": "response.output_text.delta", "delta": "Hi there"})
    assert cut.usage(50) == Usage(50, COUNTER.count("Hi there"), source=UsageSource.COUNTED)


def test_embedding_inputs_and_image_replies():
    assert embedding_input_tokens(COUNTER, "a b") == COUNTER.count("a b")
    assert embedding_input_tokens(COUNTER, [1, 2, 3]) == 3
    assert embedding_input_tokens(COUNTER, [[1, 2], [3]]) == 3
    assert usage_from_images({"data": [{}, {}]}).images == 2
    assert usage_from_images({"error": {}}).images == 0


def test_meters_notice_an_error_inside_the_stream():
    from metering.openai_chat import ChatStreamMeter
    from metering.openai_media import ImageStreamMeter

    responses = ResponsesStreamMeter(COUNTER)
    feed(responses, {"type": "response.failed", "response": {"usage": None}})
    chat = ChatStreamMeter(COUNTER)
    chat.observe(orjson.dumps({"error": {"message": "boom"}}))
    images = ImageStreamMeter()
    images.observe(orjson.dumps({"type": "error", "error": {"message": "boom"}}))
    anthropic = AnthropicStreamMeter(COUNTER)
    feed(anthropic, {"type": "error", "error": {"type": "overloaded_error"}})
    assert responses.failed and chat.failed and images.failed and anthropic.failed
    fine = ResponsesStreamMeter(COUNTER)
    feed(fine, {"type": "response.completed", "response": {"usage": None}})
    assert not fine.failed
