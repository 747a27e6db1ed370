"""Rate tables: what a model costs the operator and what it charges the caller.

Token rates are given per 1M tokens, so a rate in credits per 1M tokens is exactly a
rate in micro-credits per token. Image rates are credits per image. A charge is one
exact sum over its parts, rounded up once to the micro-credit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal
from typing import Any

from billing.money import MICRO_PER_CREDIT, parse_decimal
from metering.usage import Usage

# Wide enough that no product of a token count and a rate is ever rounded.
_EXACT = Context(prec=80)
_ZERO = Decimal(0)


def _ceiling(value: Decimal) -> int:
    return int(value.to_integral_value(ROUND_CEILING))


def _mapping(table: Any, what: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ValueError(f"expected a mapping of {what}")
    return table


def _unknown(table: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = set(table) - set(known)
    if unknown:
        raise ValueError(f"unknown rate keys {sorted(unknown)}; expected {', '.join(known)}")


@dataclass(frozen=True, slots=True)
class TextRate:
    """Micro-credits per token (= credits per 1M tokens), for each kind of token.

    Cached input (OpenAI's cached tokens, Anthropic's cache reads) defaults to the input
    rate, cache writes to the input rate, and reasoning to the output rate.
    """

    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal
    reasoning: Decimal

    KEYS = ("input", "output", "cached_input", "cache_read", "cache_write", "reasoning")

    @classmethod
    def parse(cls, table: Any, *, output_required: bool = True) -> TextRate:
        """From a YAML mapping such as {input: "0.15", output: "0.60"}.

        `cache_read` is another name for `cached_input`. An embedding model has no output
        (`output_required=False`). Raises KeyError for a missing key, ValueError for a
        bad value.
        """
        table = _mapping(table, "token rates")
        _unknown(table, cls.KEYS)
        if "cached_input" in table and "cache_read" in table:
            raise ValueError("cached_input and cache_read are the same rate; give one")
        rates = {key: parse_decimal(value) for key, value in table.items()}
        if "input" not in rates:
            raise KeyError("input")
        if "output" not in rates and output_required:
            raise KeyError("output")
        output = rates.get("output", _ZERO)
        return cls(
            input=rates["input"],
            output=output,
            cached_input=rates.get("cached_input", rates.get("cache_read", rates["input"])),
            cache_write=rates.get("cache_write", rates["input"]),
            reasoning=rates.get("reasoning", output),
        )

    def charge(self, usage: Usage) -> int:
        """Micro-credits for this usage, rounded up to the unit."""
        cached = min(usage.cached_tokens, usage.input_tokens)
        written = min(usage.cache_write_tokens, usage.input_tokens - cached)
        reasoning = min(usage.reasoning_tokens, usage.output_tokens)
        parts = (
            (usage.input_tokens - cached - written, self.input),
            (cached, self.cached_input),
            (written, self.cache_write),
            (usage.output_tokens - reasoning, self.output),
            (reasoning, self.reasoning),
        )
        total = _ZERO
        for count, rate in parts:
            if count:
                total = _EXACT.add(total, _EXACT.multiply(count, rate))
        return _ceiling(total)

    @property
    def _dearest_input(self) -> Decimal:
        return max(self.input, self.cached_input, self.cache_write)

    @property
    def _dearest_output(self) -> Decimal:
        return max(self.output, self.reasoning)

    def worst_case(self, input_tokens: int, output_tokens: int) -> int:
        """The most these token counts can cost, whatever kinds they turn out to be."""
        return _ceiling(
            _EXACT.add(
                _EXACT.multiply(input_tokens, self._dearest_input),
                _EXACT.multiply(output_tokens, self._dearest_output),
            )
        )

    def output_tokens_covered(self, amount: int, input_tokens: int) -> int:
        """How many output tokens `amount` micro-credits pay for after the input."""
        left = _EXACT.subtract(amount, _EXACT.multiply(input_tokens, self._dearest_input))
        if left < 0:
            return 0
        if not self._dearest_output:
            return 1 << 62
        return int(_EXACT.divide(left, self._dearest_output).to_integral_value(ROUND_FLOOR))

    def describe(self) -> dict[str, str]:
        """The rates as decimal strings of credits per 1M tokens."""
        return {
            "input": str(self.input),
            "output": str(self.output),
            "cached_input": str(self.cached_input),
            "cache_write": str(self.cache_write),
            "reasoning": str(self.reasoning),
        }


@dataclass(frozen=True, slots=True)
class ImagePrice:
    """Micro-credits per image of one size and quality: what one request pays."""

    per_image: int

    def charge(self, usage: Usage) -> int:
        return usage.images * self.per_image

    def describe(self) -> dict[str, str]:
        return {"image": str(Decimal(self.per_image) / MICRO_PER_CREDIT)}


@dataclass(frozen=True, slots=True)
class ImageRate:
    """Credits per generated image: by default `image`, or by size, or by quality.

    `qualities` maps a quality to a price or to prices by size. For a request the most
    specific entry applies: quality and size, quality, size, then the default.
    """

    image: Decimal
    sizes: dict[str, Decimal] = field(default_factory=dict)
    qualities: dict[str, Decimal | dict[str, Decimal]] = field(default_factory=dict)

    @classmethod
    def parse(cls, table: Any) -> ImageRate:
        table = _mapping(table, "image rates")
        _unknown(table, ("image", "sizes", "quality"))
        if "image" not in table:
            raise KeyError("image")
        sizes = {
            str(size): parse_decimal(price)
            for size, price in _mapping(table.get("sizes") or {}, "sizes to prices").items()
        }
        qualities: dict[str, Decimal | dict[str, Decimal]] = {}
        for quality, price in _mapping(table.get("quality") or {}, "qualities").items():
            qualities[str(quality)] = (
                {str(size): parse_decimal(p) for size, p in price.items()}
                if isinstance(price, dict)
                else parse_decimal(price)
            )
        return cls(image=parse_decimal(table["image"]), sizes=sizes, qualities=qualities)

    def price(self, size: str | None, quality: str | None) -> ImagePrice:
        credits = self.sizes.get(size or "", self.image)
        by_quality = self.qualities.get(quality or "")
        if isinstance(by_quality, dict):
            credits = by_quality.get(size or "", credits)
        elif by_quality is not None:
            credits = by_quality
        return ImagePrice(_ceiling(_EXACT.multiply(credits, MICRO_PER_CREDIT)))

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"image": str(self.image)}
        if self.sizes:
            described["sizes"] = {size: str(price) for size, price in self.sizes.items()}
        if self.qualities:
            described["quality"] = {
                quality: {s: str(p) for s, p in price.items()}
                if isinstance(price, dict)
                else str(price)
                for quality, price in self.qualities.items()
            }
        return described


Rate = TextRate | ImageRate


@dataclass(frozen=True, slots=True)
class ModelRate:
    """Both sides of a model's rate: the operator's cost and the caller's price.

    `groups` holds the prices of customer groups that pay a rate of their own.
    """

    cost: Rate
    price: Rate
    groups: dict[str, Rate] = field(default_factory=dict)

    def price_for(self, group: str) -> Rate:
        return self.groups.get(group, self.price)
