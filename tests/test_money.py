"""Credits are exact integers; a charge is one sum rounded up once."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from billing.money import credits_to_micro, micro_to_credits
from billing.rates import ImageRate, TextRate
from metering.usage import Usage


@pytest.mark.parametrize(
    "text,units",
    [
        ("12.5", 12_500_000),
        ("0.000001", 1),
        ("5", 5_000_000),
        (3, 3_000_000),
        (Decimal("0.1"), 100_000),
        ("-2.25", -2_250_000),
    ],
)
def test_credit_round_trip(text, units):
    assert credits_to_micro(text, allow_negative=True) == units
    assert credits_to_micro(micro_to_credits(units), allow_negative=True) == units


def test_formatting():
    assert micro_to_credits(12_500_000) == "12.5"
    assert micro_to_credits(-1) == "-0.000001"
    assert micro_to_credits(0) == "0"


@pytest.mark.parametrize("bad", ["0.0000001", "abc", "NaN", "Infinity", 1.5, True, None, "-1"])
def test_refused_amounts(bad):
    with pytest.raises(ValueError):
        credits_to_micro(bad)


def test_charge_is_one_ceiling_of_the_exact_sum():
    rate = TextRate.parse({"input": "0.30", "output": "1.20"})
    # 0.30 + 1.20 = 1.5 micro-credits -> 2; rounding each kind would give 1 + 2 = 3.
    assert rate.charge(Usage(input_tokens=1, output_tokens=1)) == 2
    assert rate.charge(Usage(input_tokens=3, output_tokens=1)) == 3  # 2.1 -> 3
    assert rate.charge(Usage(input_tokens=10, output_tokens=0)) == 3  # exactly 3
    big = 10**12
    assert rate.charge(Usage(input_tokens=big, output_tokens=big + 1)) == 1_500_000_000_000 + 2


def test_output_tokens_covered_matches_worst_case():
    rate = TextRate.parse({"input": "0.30", "output": "1.20"})
    amount = rate.worst_case(50, 400)
    covered = rate.output_tokens_covered(amount, 50)
    assert rate.worst_case(50, covered) <= amount < rate.worst_case(50, covered + 1)


@pytest.mark.parametrize(
    "table",
    [
        {"input": "1"},
        {"input": "x", "output": "1"},
        {"input": "-1", "output": "1"},
        {"input": "1", "output": "1", "extra": "1"},
        "1",
    ],
)
def test_bad_rate_tables(table):
    with pytest.raises((KeyError, ValueError)):
        TextRate.parse(table)


def test_each_kind_of_token_has_its_rate_and_defaults_to_its_side():
    rate = TextRate.parse(
        {"input": "3", "output": "12", "cached_input": "1.5", "cache_write": "3.75"}
    )
    assert rate.reasoning == Decimal("12")  # reasoning defaults to the output rate
    usage = Usage(
        input_tokens=100, output_tokens=50, cached_tokens=30, cache_write_tokens=20,
        reasoning_tokens=10,
    )  # fmt: skip
    # 50 plain input at 3, 30 cached at 1.5, 20 written at 3.75, 50 output at 12.
    assert rate.charge(usage) == math.ceil(
        50 * 3 + 30 * Decimal("1.5") + 20 * Decimal("3.75") + 50 * 12
    )
    plain = TextRate.parse({"input": "3", "output": "12"})
    assert plain.charge(usage) == 100 * 3 + 50 * 12  # without their own rates: input, output


def test_the_worst_case_takes_the_dearest_rate_of_each_side():
    rate = TextRate.parse({"input": "3", "output": "12", "cache_write": "5", "reasoning": "20"})
    assert rate.worst_case(10, 10) == 10 * 5 + 10 * 20
    assert rate.output_tokens_covered(250, 10) == 10


def test_image_prices_by_quality_and_size_then_size_then_default():
    rate = ImageRate.parse(
        {
            "image": "0.05",
            "sizes": {"1024x1536": "0.08"},
            "quality": {"high": {"1024x1536": "0.25"}, "low": "0.01"},
        }
    )
    assert rate.price(None, None).per_image == 50_000
    assert rate.price("1024x1536", None).per_image == 80_000
    assert rate.price("1024x1536", "high").per_image == 250_000
    assert rate.price("1024x1024", "high").per_image == 50_000  # high lists no such size
    assert rate.price("1024x1536", "low").per_image == 10_000
    assert rate.price("1024x1536", "high").charge(Usage(images=3)) == 750_000
