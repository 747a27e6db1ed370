"""Usage of Anthropic's Messages API: from its stream events and from whole messages.

Anthropic reports input tokens without the prompt cache's: `cache_read_input_tokens` and
`cache_creation_input_tokens` come on top. Usage here folds them into `input_tokens`, as
OpenAI counts, and keeps them apart as `cached_tokens` and `cache_write_tokens`.
`output_tokens` in `message_delta` is cumulative: the last value is the total.
"""

from __future__ import annotations

from typing import Any

import orjson

from metering.tokens import TokenCounter
from metering.usage import Usage, UsageSource, token_count


class _InputUsage:
    __slots__ = ("cache_read", "cache_write", "input")

    def __init__(self) -> None:
        self.input = self.cache_read = self.cache_write = 0

    def update(self, usage: dict[str, Any]) -> None:
        """Take the counts a usage object has; absent ones keep their last value."""
        if isinstance(usage.get("input_tokens"), int):
            self.input = token_count(usage["input_tokens"])
        if isinstance(usage.get("cache_read_input_tokens"), int):
            self.cache_read = token_count(usage["cache_read_input_tokens"])
        if isinstance(usage.get("cache_creation_input_tokens"), int):
            self.cache_write = token_count(usage["cache_creation_input_tokens"])

    def usage(self, output_tokens: int, source: UsageSource) -> Usage:
        return Usage(
            input_tokens=self.input + self.cache_read + self.cache_write,
            output_tokens=output_tokens,
            cached_tokens=self.cache_read,
            cache_write_tokens=self.cache_write,
            source=source,
        )


def usage_from_anthropic(usage: Any) -> Usage | None:
    """A Messages `usage` object as Usage; None when it is absent or malformed."""
    if not isinstance(usage, dict) or not isinstance(usage.get("output_tokens"), int):
        return None
    counts = _InputUsage()
    counts.update(usage)
    return counts.usage(token_count(usage["output_tokens"]), UsageSource.UPSTREAM)


def _block_text(block: Any) -> list[str]:
    """The output-token-bearing strings of a content block or of a block's delta."""
    if not isinstance(block, dict):
        return []
    texts = [
        value
        for key in ("text", "thinking", "partial_json", "name")
        if isinstance(value := block.get(key), str) and value
    ]
    if block.get("type") == "tool_use" and isinstance(block.get("input"), dict | list):
        if block["input"]:
            texts.append(orjson.dumps(block["input"]).decode())
    return texts


class AnthropicStreamMeter:
    """Watches a Messages stream: the usage it reports, and its output for counting."""

    __slots__ = (
        "_counter", "_input", "_pieces", "_started", "failed", "final_output", "output_tokens",
    )  # fmt: skip

    def __init__(self, counter: TokenCounter) -> None:
        self._counter = counter
        self._input = _InputUsage()
        self._started = False  # message_start seen: its input counts are the provider's
        self._pieces: list[str] = []
        self.final_output: int | None = None  # message_delta's cumulative output_tokens
        self.output_tokens = 0  # running estimate, for the hold
        self.failed = False  # an `error` event came

    def observe(self, data: bytes) -> bool:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        if isinstance(event, dict):
            self.observe_event(event)
        return False  # nothing in a Messages stream is creditgate's to hide

    def observe_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "content_block_delta":
            texts = _block_text(event.get("delta"))
        elif kind == "content_block_start":
            texts = _block_text(event.get("content_block"))
        elif kind == "message_start":
            message = event.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                self._input.update(usage)
                self._started = True
            return
        elif kind == "error":
            self.failed = True
            return
        elif kind == "message_delta":
            usage = event.get("usage")
            if isinstance(usage, dict):
                self._input.update(usage)  # newer streams repeat the input counts here
                if isinstance(usage.get("output_tokens"), int):
                    self.final_output = token_count(usage["output_tokens"])
            return
        else:
            return
        if texts:
            self._pieces += texts
            count = self._counter.count
            self.output_tokens += sum(count(text) for text in texts)

    def usage(self, prompt_tokens: int) -> Usage:
        if self.final_output is not None and self._started:
            return self._input.usage(self.final_output, UsageSource.UPSTREAM)
        # Cut off before the final count: the delivered output, counted.
        output = self._counter.count("".join(self._pieces))
        if self._started:
            return self._input.usage(output, UsageSource.COUNTED)
        return Usage(input_tokens=prompt_tokens, output_tokens=output, source=UsageSource.COUNTED)


def usage_from_message(body: Any, counter: TokenCounter, prompt_tokens: int) -> Usage:
    """Usage of a whole (non-streamed) message: the provider's, else counted."""
    if isinstance(body, dict):
        reported = usage_from_anthropic(body.get("usage"))
        if reported is not None:
            return reported
        content = body.get("content")
    else:
        content = None
    texts = [text for block in content or () for text in _block_text(block)]
    return Usage(
        input_tokens=prompt_tokens,
        output_tokens=counter.count("".join(texts)),
        source=UsageSource.COUNTED,
    )
