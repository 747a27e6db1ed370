"""Rate tables: what a model costs the operator and what it charges the caller.

Text rates are given per 1M tokens, so a rate in credits per 1M tokens is exactly a
rate in micro-credits per token. A charge is one exact sum over the token kinds,
rounded up once to the micro-credit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal
from typing import Any

from billing.money import parse_decimal
from metering.usage import Usage

# Wide enough that no product of a token count and a rate is ever rounded.
_EXACT = Context(prec=80)


@dataclass(frozen=True, slots=True)
class TextRate:
    """Micro-credits per token (= credits per 1M tokens), for input and output."""

    input: Decimal
    output: Decimal

    @classmethod
    def parse(cls, table: Any) -> TextRate:
        """From a YAML mapping such as {input: "0.15", output: "0.60"}.

        Raises KeyError for a missing side and ValueError for a bad value.
        """
        if not isinstance(table, dict):
            raise ValueError("expected a mapping with input and output rates")
        unknown = set(table) - {"input", "output"}
        if unknown:
            raise ValueError(f"unknown rate keys {sorted(unknown)}; expected input, output")
        rates = {}
        for side in ("input", "output"):
            if side not in table:
                raise KeyError(side)
            rates[side] = parse_decimal(table[side])
        return cls(**rates)

    def _exact(self, input_tokens: int, output_tokens: int) -> Decimal:
        return _EXACT.add(
            _EXACT.multiply(input_tokens, self.input), _EXACT.multiply(output_tokens, self.output)
        )

    def charge(self, usage: Usage) -> int:
        """Micro-credits for this usage, rounded up to the unit."""
        return self.worst_case(usage.input_tokens, usage.output_tokens)

    def worst_case(self, input_tokens: int, output_tokens: int) -> int:
        """Micro-credits for these token counts, rounded up to the unit."""
        return int(self._exact(input_tokens, output_tokens).to_integral_value(ROUND_CEILING))

    def output_tokens_covered(self, amount: int, input_tokens: int) -> int:
        """How many output tokens `amount` micro-credits pay for after the input."""
        left = _EXACT.subtract(amount, _EXACT.multiply(input_tokens, self.input))
        if left < 0:
            return 0
        if not self.output:
            return 1 << 62
        return int(_EXACT.divide(left, self.output).to_integral_value(ROUND_FLOOR))


@dataclass(frozen=True, slots=True)
class ModelRate:
    """Both sides of a model's rate: the operator's cost and the caller's price.

    `groups` holds the prices of customer groups that pay a rate of their own.
    """

    cost: TextRate
    price: TextRate
    groups: dict[str, TextRate] = field(default_factory=dict)

    def price_for(self, group: str) -> TextRate:
        return self.groups.get(group, self.price)
