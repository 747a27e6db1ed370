"""POST /v1/embeddings and POST /v1/images/generations, to OpenAI-type providers."""

from __future__ import annotations

from typing import Any, ClassVar

from metering.openai_media import (
    ImageStreamMeter,
    embedding_input_tokens,
    usage_from_embeddings,
    usage_from_images,
)
from metering.tokens import TokenCounter
from metering.usage import Usage
from proxy.config import ModelConfig
from proxy.errors import bad_request
from proxy.exchange import Ask, Exchange, Surface, json_or_none, positive_int, stream_flag
from proxy.relay import EventTransform, StreamMeter
from proxy.upstream import Operation

MAX_IMAGES = 10  # OpenAI's own limit on n


class OpenAIEmbeddings(Exchange):
    def reply(self, body: bytes) -> tuple[Usage, bytes]:
        return usage_from_embeddings(json_or_none(body), self.ask.prompt_tokens), body


class Embeddings(Surface):
    path = "/v1/embeddings"
    endpoint = "embeddings"
    model_types = frozenset({"embedding"})
    exchanges: ClassVar[dict[Operation, type[Exchange]]] = {Operation.EMBEDDINGS: OpenAIEmbeddings}

    def ask(self, payload: dict[str, Any], model: ModelConfig, counter: TokenCounter) -> Ask:
        given = payload.get("input")
        valid = (isinstance(given, str) and given) or (
            isinstance(given, list)
            and given
            and (
                all(isinstance(i, str) and i for i in given)
                or all(isinstance(i, int) and not isinstance(i, bool) for i in given)
                or all(isinstance(i, list) and i for i in given)
            )
        )
        if not valid:
            raise bad_request(
                "'input' is required: a string, a list of strings or of token arrays.",
                param="input",
            )
        return Ask(
            model=model,
            payload=payload,
            counter=counter,
            prompt_tokens=embedding_input_tokens(counter, given),
        )


class OpenAIImages(Exchange):
    def reply(self, body: bytes) -> tuple[Usage, bytes]:
        return usage_from_images(json_or_none(body)), body

    def stream(self) -> tuple[StreamMeter, EventTransform | None]:
        return ImageStreamMeter(), None


class ImageGenerations(Surface):
    path = "/v1/images/generations"
    endpoint = "images.generations"
    model_types = frozenset({"image"})
    exchanges: ClassVar[dict[Operation, type[Exchange]]] = {Operation.IMAGES: OpenAIImages}

    def ask(self, payload: dict[str, Any], model: ModelConfig, counter: TokenCounter) -> Ask:
        prompt = payload.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise bad_request("'prompt' is required: a non-empty string.", param="prompt")
        images = positive_int(payload, "n") or 1
        if images > MAX_IMAGES:
            raise bad_request(f"'n' must be at most {MAX_IMAGES}.", param="n")
        options = []
        for key in ("size", "quality"):
            value = payload.get(key)
            if value is not None and not isinstance(value, str):
                raise bad_request(f"'{key}' must be a string.", param=key)
            options.append(value)
        return Ask(
            model=model,
            payload=payload,
            counter=counter,
            prompt_tokens=counter.count(prompt),
            stream=stream_flag(payload),
            images=images,
            image=(options[0], options[1]),
        )
