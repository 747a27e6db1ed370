"""The usage of one request: what billing prices and what the charge row records."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class UsageSource(StrEnum):
    UPSTREAM = "upstream"  # reported by the provider
    COUNTED = "counted"  # counted locally with tiktoken
    NONE = "none"  # nothing was used or nothing is known (failed or expired requests)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts in OpenAI's sense: `input_tokens` is the whole prompt, of which
    `cached_tokens` were read from and `cache_write_tokens` written to a prompt cache;
    `output_tokens` includes the `reasoning_tokens`. `images` counts generated images."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # part of input_tokens
    reasoning_tokens: int = 0  # part of output_tokens
    cache_write_tokens: int = 0  # part of input_tokens
    images: int = 0
    source: UsageSource = UsageSource.NONE


NO_USAGE = Usage()


def token_count(value: Any) -> int:
    """A count from a provider's usage JSON: the value if it is a positive integer, else 0."""
    return value if isinstance(value, int) and value > 0 else 0
