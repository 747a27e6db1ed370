"""POST /v1/messages: Anthropic's Messages API, passed through to Anthropic providers."""

from __future__ import annotations

from typing import Any, ClassVar

from metering.anthropic import AnthropicStreamMeter, usage_from_message
from metering.tokens import TokenCounter
from metering.usage import Usage
from proxy.config import ModelConfig
from proxy.errors import WireFormat, bad_request
from proxy.exchange import Ask, Exchange, Surface, json_or_none, positive_int, text_ask
from proxy.relay import EventTransform, StreamMeter
from proxy.upstream import Operation


class NativeMessages(Exchange):
    def reply(self, body: bytes) -> tuple[Usage, bytes]:
        ask = self.ask
        return usage_from_message(json_or_none(body), ask.counter, ask.prompt_tokens), body

    def stream(self) -> tuple[StreamMeter, EventTransform | None]:
        return AnthropicStreamMeter(self.ask.counter), None


class Messages(Surface):
    path = "/v1/messages"
    endpoint = "messages"
    wire = WireFormat.ANTHROPIC
    exchanges: ClassVar[dict[Operation, type[Exchange]]] = {Operation.MESSAGES: NativeMessages}
    x_api_key = True
    passed_headers = ("anthropic-version", "anthropic-beta")  # Anthropic reads them

    def ask(self, payload: dict[str, Any], model: ModelConfig, counter: TokenCounter) -> Ask:
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("messages: a non-empty list is required.", param="messages")
        max_tokens = positive_int(payload, "max_tokens")
        if max_tokens is None:
            raise bad_request("max_tokens: a positive integer is required.", param="max_tokens")
        system = payload.get("system")
        if system is not None and not isinstance(system, str | list):
            raise bad_request("system: a string or a list of text blocks.", param="system")
        return text_ask(payload, model, counter, ("system", "messages", "tools"), max_tokens)
