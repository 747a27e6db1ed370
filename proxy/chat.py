"""POST /v1/chat/completions, over OpenAI-compatible providers and over Anthropic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import orjson
from aiohttp import web

from metering.anthropic import AnthropicStreamMeter, usage_from_message
from metering.openai_chat import ChatStreamMeter, usage_from_chat_body
from metering.tokens import TokenCounter
from metering.usage import Usage
from proxy.anthropic_chat import (
    ChatFromMessagesStream,
    chat_completion,
    chat_error,
    messages_request,
)
from proxy.config import Deployment, ModelConfig
from proxy.errors import bad_request
from proxy.exchange import Ask, Exchange, Surface, json_or_none, positive_int, stream_flag
from proxy.relay import EventTransform, HiddenUsage, StreamMeter
from proxy.upstream import Operation


class OpenAIChat(Exchange):
    """Chat Completions as they are: the bytes pass through untouched. A stream asks for
    the usage chunk, which is hidden unless the caller asked for it too."""

    def __init__(self, ask: Ask) -> None:
        super().__init__(ask)
        options = ask.payload.get("stream_options") or {}
        self._hide_usage = ask.stream and not options.get("include_usage")

    def body(self, deployment: Deployment) -> dict[str, Any]:
        payload = super().body(deployment)
        if self._hide_usage:
            options = payload.get("stream_options") or {}
            payload["stream_options"] = {**options, "include_usage": True}
        return payload

    def reply(self, body: bytes) -> tuple[Usage, bytes]:
        ask = self.ask
        return usage_from_chat_body(json_or_none(body), ask.counter, ask.prompt_tokens), body

    def stream(self) -> tuple[StreamMeter, EventTransform | None]:
        meter = ChatStreamMeter(self.ask.counter)
        return meter, HiddenUsage(meter) if self._hide_usage else None


# Chat parameters Messages cannot honour, and the values that would need it. Sampling
# hints without an equivalent (seed, penalties) are dropped: they never change the form
# of an answer, while these would, so a caller relying on them gets a 400 instead.
_UNTRANSLATABLE: dict[str, Callable[[Any], bool]] = {
    "response_format": lambda v: isinstance(v, dict) and v.get("type") not in (None, "text"),
    "logprobs": bool,
    "top_logprobs": lambda v: v is not None,
    "logit_bias": bool,
    "audio": lambda v: v is not None,
    "modalities": lambda v: v not in (None, ["text"]),
}


class ChatOverMessages(Exchange):
    """Chat Completions served by Anthropic: translated there and back."""

    stream_content_type = "text/event-stream; charset=utf-8"

    def __init__(self, ask: Ask) -> None:
        super().__init__(ask)
        payload = ask.payload
        if (payload.get("n") or 1) != 1:
            raise bad_request("This model answers one choice: 'n' must be 1.", param="n")
        for key, unsupported in _UNTRANSLATABLE.items():
            if unsupported(payload.get(key)):
                raise bad_request(
                    f"'{key}' cannot be honoured by {ask.model.name!r}, which is served "
                    "through Anthropic's Messages API.",
                    param=key,
                )
        self._request = messages_request(payload, ask.output_tokens)

    def body(self, deployment: Deployment) -> dict[str, Any]:
        return {**self._request, "model": deployment.upstream}

    def reply(self, body: bytes) -> tuple[Usage, bytes]:
        message = json_or_none(body)
        usage = usage_from_message(message, self.ask.counter, self.ask.prompt_tokens)
        if not isinstance(message, dict):
            return usage, body
        return usage, orjson.dumps(chat_completion(message, self.ask.model.name, usage))

    def stream(self) -> tuple[StreamMeter, EventTransform | None]:
        meter = AnthropicStreamMeter(self.ask.counter)
        options = self.ask.payload.get("stream_options") or {}
        translate = ChatFromMessagesStream(
            meter, self.ask.model.name, bool(options.get("include_usage"))
        )
        return meter, translate

    def refusal(self, status: int, body: bytes) -> web.Response:
        raise chat_error(status, body)


class ChatCompletions(Surface):
    path = "/v1/chat/completions"
    endpoint = "chat.completions"
    exchanges: ClassVar[dict[Operation, type[Exchange]]] = {
        Operation.CHAT: OpenAIChat,
        Operation.MESSAGES: ChatOverMessages,
    }

    def ask(self, payload: dict[str, Any], model: ModelConfig, counter: TokenCounter) -> Ask:
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("'messages' is required: a non-empty list.", param="messages")
        stream = stream_flag(payload)
        options = payload.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise bad_request("'stream_options' must be an object.", param="stream_options")
        max_output = (
            positive_int(payload, "max_completion_tokens")
            or positive_int(payload, "max_tokens")
            or model.max_output_tokens
        )
        choices = positive_int(payload, "n") or 1
        return Ask(
            model=model,
            payload=payload,
            counter=counter,
            prompt_tokens=counter.count_messages(messages),
            stream=stream,
            output_tokens=max_output * choices,
        )
