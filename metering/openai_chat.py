"""Usage of OpenAI Chat Completions: from stream chunks, from whole bodies, or counted."""

from __future__ import annotations

from typing import Any

import orjson

from metering.tokens import TokenCounter
from metering.usage import Usage, UsageSource, token_count

DONE = b"[DONE]"


def usage_from_openai(usage: Any) -> Usage | None:
    """Parse an OpenAI `usage` object; None when it is absent or malformed."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=prompt,
        output_tokens=completion,
        cached_tokens=token_count(prompt_details.get("cached_tokens")),
        reasoning_tokens=token_count(completion_details.get("reasoning_tokens")),
        source=UsageSource.UPSTREAM,
    )


def _output_text(message: dict[str, Any]) -> list[str]:
    """The output-token-bearing strings of a message or a delta."""
    texts = [
        value
        for key in ("content", "refusal", "reasoning_content")
        if isinstance(value := message.get(key), str) and value
    ]
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            texts.extend(
                value
                for key in ("name", "arguments")
                if isinstance(value := function.get(key), str) and value
            )
    return texts


class ChatStreamMeter:
    """Watches the `data:` payloads of a chat completion stream.

    Keeps the upstream's usage if it reports one, and otherwise the visible output, so
    that the output can be counted with tiktoken. `output_tokens` is a running estimate
    (each piece counted on its own) used to keep the stream within its hold.
    """

    __slots__ = ("_counter", "_pieces", "failed", "output_tokens", "upstream_usage")

    def __init__(self, counter: TokenCounter) -> None:
        self._counter = counter
        self._pieces: dict[int, list[str]] = {}  # by choice index
        self.output_tokens = 0
        self.upstream_usage: Usage | None = None
        self.failed = False  # the provider reported an error inside the stream

    def observe(self, data: bytes) -> bool:
        """Meter one payload; True when it is a usage-only chunk (no choices)."""
        if data == DONE:
            return False
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(chunk, dict):
            return False
        if "error" in chunk:
            self.failed = True
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if not isinstance(delta, dict):
                    continue
                if len(delta) == 1 and type(content := delta.get("content")) is str:
                    texts = [content] if content else []  # the common delta: text only
                else:
                    texts = _output_text(delta)
                if texts:
                    index = choice.get("index")
                    key = index if isinstance(index, int) else 0
                    pieces = self._pieces.get(key)
                    if pieces is None:
                        pieces = self._pieces[key] = []
                    pieces += texts
                    count = self._counter.count
                    self.output_tokens += sum(count(text) for text in texts)
        if chunk.get("usage") is None:
            return False
        usage = usage_from_openai(chunk.get("usage"))
        if usage is None:
            return False
        self.upstream_usage = usage
        return not choices

    def usage(self, prompt_tokens: int) -> Usage:
        """The usage to bill: the upstream's, else the prompt and the delivered text counted."""
        if self.upstream_usage is not None:
            return self.upstream_usage
        return Usage(
            input_tokens=prompt_tokens,
            output_tokens=sum(self._counter.count("".join(p)) for p in self._pieces.values()),
            source=UsageSource.COUNTED,
        )


def usage_from_chat_body(body: Any, counter: TokenCounter, prompt_tokens: int) -> Usage:
    """Usage of a non-streamed chat completion: the upstream's, else counted."""
    if isinstance(body, dict):
        reported = usage_from_openai(body.get("usage"))
        if reported is not None:
            return reported
        choices = body.get("choices")
    else:
        choices = None
    output_tokens = 0
    for choice in choices if isinstance(choices, list) else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            output_tokens += counter.count("".join(_output_text(message)))
    return Usage(
        input_tokens=prompt_tokens, output_tokens=output_tokens, source=UsageSource.COUNTED
    )
