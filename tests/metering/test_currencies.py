"""format_minor: the one way an amount in minor units reads in its currency's major unit."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.currencies import CURRENCIES, format_minor


@pytest.mark.parametrize(
    ("amount_minor", "currency", "expected"),
    [
        (12345, "USD", "$123.45"),
        (100, "USD", "$1.00"),
        (5, "EUR", "€0.05"),
        (0, "USD", "$0.00"),
        (-12345, "USD", "-$123.45"),
        (123456789, "USD", "$1,234,567.89"),
        (12345, "JPY", "¥12,345"),
        (0, "JPY", "¥0"),
        (12345, "KWD", "KD 12.345"),
        (7, "KWD", "KD 0.007"),
        (1000, "BHD", "BD 1.000"),
    ],
)
def test_format_minor(amount_minor: int, currency: str, expected: str) -> None:
    assert format_minor(amount_minor, currency) == expected


def test_format_minor_rejects_an_unknown_currency() -> None:
    with pytest.raises(KeyError):
        format_minor(1, "XXX")


@settings(max_examples=200, deadline=None)
@given(
    amount_minor=st.integers(min_value=-(10**15), max_value=10**15),
    currency=st.sampled_from(["USD", "JPY", "KWD", "EUR", "BHD"]),
)
def test_format_minor_is_exact(amount_minor: int, currency: str) -> None:
    """Exactly the currency's decimal places, and the same amount read back."""
    places = {"USD": 2, "EUR": 2, "JPY": 0, "KWD": 3, "BHD": 3}[currency]
    text = format_minor(amount_minor, currency)
    sign = "-" if text.startswith("-") else ""
    number = text.removeprefix("-").removeprefix(CURRENCIES[currency].symbol).replace(",", "")

    assert len(number.partition(".")[2]) == places
    assert Fraction(sign + number) == Fraction(amount_minor, 10**places)
