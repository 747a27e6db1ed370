"""Usage of OpenAI's Responses API: from its stream events and from whole responses.

The usage arrives with the response's last event: `response.completed`, or
`response.incomplete` / `response.failed` when it ended early.
"""

from __future__ import annotations

from typing import Any

import orjson

from metering.tokens import TokenCounter
from metering.usage import Usage, UsageSource, token_count

_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Events whose `delta` is output text of some kind.
_DELTA_EVENTS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.custom_tool_call_input.delta",
    }
)


def usage_from_responses(usage: Any) -> Usage | None:
    """A Responses `usage` object as Usage; None when it is absent or malformed."""
    if not isinstance(usage, dict):
        return None
    input_tokens, output_tokens = usage.get("input_tokens"), usage.get("output_tokens")
    if not isinstance(input_tokens, int) or not isinstance(output_tokens, int):
        return None
    input_details = usage.get("input_tokens_details") or {}
    output_details = usage.get("output_tokens_details") or {}
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_tokens=token_count(input_details.get("cached_tokens")),
        reasoning_tokens=token_count(output_details.get("reasoning_tokens")),
        source=UsageSource.UPSTREAM,
    )


def _output_text(output: Any) -> list[str]:
    """The output-token-bearing strings of a response's output items."""
    texts: list[str] = []
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict):
            continue
        for key in ("arguments", "name", "input"):
            if isinstance(value := item.get(key), str) and value:
                texts.append(value)
        for part in item.get("content") or item.get("summary") or ():
            if isinstance(part, dict):
                for key in ("text", "refusal"):
                    if isinstance(value := part.get(key), str) and value:
                        texts.append(value)
    return texts


class ResponsesStreamMeter:
    __slots__ = ("_counter", "_pieces", "failed", "output_tokens", "upstream_usage")

    def __init__(self, counter: TokenCounter) -> None:
        self._counter = counter
        self._pieces: list[str] = []
        self.output_tokens = 0
        self.upstream_usage: Usage | None = None
        self.failed = False  # an `error` or `response.failed` event came

    def observe(self, data: bytes) -> bool:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(event, dict):
            return False
        kind = event.get("type")
        if kind in _DELTA_EVENTS:
            delta = event.get("delta")
            if isinstance(delta, str) and delta:
                self._pieces.append(delta)
                self.output_tokens += self._counter.count(delta)
        elif kind == "error":
            self.failed = True
        elif kind in _FINAL_EVENTS:
            self.failed = kind == "response.failed"
            response = event.get("response")
            if isinstance(response, dict):
                self.upstream_usage = usage_from_responses(response.get("usage"))
        return False

    def usage(self, prompt_tokens: int) -> Usage:
        if self.upstream_usage is not None:
            return self.upstream_usage
        return Usage(
            input_tokens=prompt_tokens,
            output_tokens=self._counter.count("".join(self._pieces)),
            source=UsageSource.COUNTED,
        )


def usage_from_response_body(body: Any, counter: TokenCounter, prompt_tokens: int) -> Usage:
    if isinstance(body, dict):
        reported = usage_from_responses(body.get("usage"))
        if reported is not None:
            return reported
        output = body.get("output")
    else:
        output = None
    return Usage(
        input_tokens=prompt_tokens,
        output_tokens=counter.count("".join(_output_text(output))),
        source=UsageSource.COUNTED,
    )
