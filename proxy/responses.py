"""POST /v1/responses: OpenAI's Responses API, passed through to OpenAI-type providers."""

from __future__ import annotations

from typing import Any, ClassVar

from metering.openai_responses import ResponsesStreamMeter, usage_from_response_body
from metering.tokens import TokenCounter
from metering.usage import Usage
from proxy.config import ModelConfig
from proxy.errors import WireFormat, bad_request
from proxy.exchange import Ask, Exchange, Surface, json_or_none, positive_int, text_ask
from proxy.relay import EventTransform, StreamMeter
from proxy.upstream import Operation


class OpenAIResponses(Exchange):
    def reply(self, body: bytes) -> tuple[Usage, bytes]:
        ask = self.ask
        return usage_from_response_body(json_or_none(body), ask.counter, ask.prompt_tokens), body

    def stream(self) -> tuple[StreamMeter, EventTransform | None]:
        return ResponsesStreamMeter(self.ask.counter), None  # the usage comes in every stream


class Responses(Surface):
    path = "/v1/responses"
    endpoint = "responses"
    wire = WireFormat.RESPONSES
    exchanges: ClassVar[dict[Operation, type[Exchange]]] = {Operation.RESPONSES: OpenAIResponses}

    def ask(self, payload: dict[str, Any], model: ModelConfig, counter: TokenCounter) -> Ask:
        given = payload.get("input")
        if not isinstance(given, str | list) or not given:
            raise bad_request("'input' is required: a string or a list of items.", param="input")
        instructions = payload.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise bad_request("'instructions' must be a string.", param="instructions")
        if payload.get("background"):
            # The answer would arrive after the request, out of reach of its settlement.
            raise bad_request("Background responses are not served here.", param="background")
        output_tokens = positive_int(payload, "max_output_tokens") or model.max_output_tokens
        return text_ask(payload, model, counter, ("instructions", "input", "tools"), output_tokens)
