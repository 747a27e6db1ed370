"""Usage of OpenAI's embeddings and image generation."""

from __future__ import annotations

from typing import Any

import orjson

from metering.tokens import TokenCounter
from metering.usage import Usage, UsageSource


def embedding_input_tokens(counter: TokenCounter, given: Any) -> int:
    """Tokens of an embeddings `input`: text, texts, or token arrays (already counted)."""
    if isinstance(given, str):
        return counter.count(given)
    total = 0
    for item in given:
        if isinstance(item, str):
            total += counter.count(item)
        elif isinstance(item, list):
            total += len(item)
        else:
            total += 1  # one token id of a single token array
    return total


def usage_from_embeddings(body: Any, prompt_tokens: int) -> Usage:
    usage = body.get("usage") if isinstance(body, dict) else None
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        return Usage(input_tokens=usage["prompt_tokens"], source=UsageSource.UPSTREAM)
    return Usage(input_tokens=prompt_tokens, source=UsageSource.COUNTED)


def usage_from_images(body: Any) -> Usage:
    """Images in a generation reply: the entries of its `data`."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return Usage()
    return Usage(images=len(data), source=UsageSource.UPSTREAM)


class ImageStreamMeter:
    """An image generation stream: each `image_generation.completed` event is an image."""

    __slots__ = ("failed", "images", "output_tokens")

    def __init__(self) -> None:
        self.images = 0
        self.output_tokens = 0  # images are held whole; nothing to cover as it streams
        self.failed = False

    def observe(self, data: bytes) -> bool:
        # Only these events are decoded: the partial images are large, and base64 never
        # holds a quote, so a quoted name found in the bytes is a JSON key or value.
        if b'"image_generation.completed"' in data or b'"error"' in data:
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                return False
            if isinstance(event, dict):
                if event.get("type") == "image_generation.completed":
                    self.images += 1
                elif event.get("type") == "error" or "error" in event:
                    self.failed = True
        return False

    def usage(self, prompt_tokens: int) -> Usage:
        return Usage(images=self.images, source=UsageSource.UPSTREAM)
