"""Credits as integers: 1 credit = 1,000,000 micro-credits. No floats on the money path."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICRO_PER_CREDIT = 1_000_000


def parse_decimal(value: object, *, allow_negative: bool = False) -> Decimal:
    """A finite Decimal from a string, int or Decimal (YAML decimals load as Decimal)."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(f"expected a decimal number, got {value!r}")
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise ValueError(f"not a decimal number: {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    if number < 0 and not allow_negative:
        raise ValueError(f"must not be negative: {value!r}")
    return number


def credits_to_micro(value: object, *, allow_negative: bool = False) -> int:
    """Exact conversion of an amount of credits; finer than a micro-credit is refused."""
    number = parse_decimal(value, allow_negative=allow_negative) * MICRO_PER_CREDIT
    if number != number.to_integral_value():
        raise ValueError(f"finer than one micro-credit: {value!r}")
    return int(number)


def micro_to_credits(units: int) -> str:
    """An exact decimal string of credits: 12_500_000 -> "12.5", -1 -> "-0.000001"."""
    sign = "-" if units < 0 else ""
    whole, fraction = divmod(abs(units), MICRO_PER_CREDIT)
    if not fraction:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:06d}".rstrip("0")
