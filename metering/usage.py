"""The usage of one request: what billing prices and what the charge row records."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class UsageSource(StrEnum):
    UPSTREAM = "upstream"  # reported by the provider
    COUNTED = "counted"  # counted locally with tiktoken
    NONE = "none"  # nothing was used or nothing is known (failed or expired requests)


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # part of input_tokens
    reasoning_tokens: int = 0  # part of output_tokens
    source: UsageSource = UsageSource.NONE


NO_USAGE = Usage()
