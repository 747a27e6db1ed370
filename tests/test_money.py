"""Credits are exact integers; a charge is one sum rounded up once."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.money import credits_to_micro, micro_to_credits
from billing.rates import TextRate
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
