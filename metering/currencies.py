"""The one table of currencies: ISO 4217 code -> minor-unit exponent and display symbol, and
how amounts and unit prices read in a currency's terms.

Amounts everywhere are integers in the currency's minor unit (cents for USD, yen for JPY,
fils for KWD). This module is pure (no Django imports) so the rating engine can use it.
"""

from __future__ import annotations

import decimal
from decimal import Decimal
from typing import NamedTuple


class Currency(NamedTuple):
    code: str
    exponent: int  # digits after the decimal point in the major unit
    symbol: str


CURRENCIES: dict[str, Currency] = {
    c.code: c
    for c in (
        Currency("USD", 2, "$"),
        Currency("EUR", 2, "€"),
        Currency("GBP", 2, "£"),
        Currency("CHF", 2, "CHF "),
        Currency("CAD", 2, "CA$"),
        Currency("AUD", 2, "A$"),
        Currency("SEK", 2, "kr "),
        Currency("INR", 2, "₹"),
        Currency("BRL", 2, "R$"),
        Currency("JPY", 0, "¥"),
        Currency("KRW", 0, "₩"),
        Currency("KWD", 3, "KD "),
        Currency("BHD", 3, "BD "),
    )
}

_UNIT_PRICE_CONTEXT = decimal.Context(prec=60)  # unit prices have up to 30 digits

CURRENCY_CHOICES: list[tuple[str, str]] = [(code, code) for code in sorted(CURRENCIES)]


def exponent(currency: str) -> int:
    """Return the minor-unit exponent of an ISO 4217 code; KeyError for an unknown code."""
    return CURRENCIES[currency].exponent


def format_minor(amount_minor: int, currency: str) -> str:
    """Render an amount in minor units for people, e.g. (123456, "USD") -> "$1,234.56"."""
    cur = CURRENCIES[currency]
    sign = "-" if amount_minor < 0 else ""
    whole, frac = divmod(abs(amount_minor), 10**cur.exponent)
    text = f"{whole:,}"
    if cur.exponent:
        text += "." + str(frac).zfill(cur.exponent)
    return f"{sign}{cur.symbol}{text}"


def parse_major(text: str, currency: str) -> int:
    """An amount typed in major units ("12.50", "1,234.5", "$3") -> minor units, exactly;
    ValueError (with the reason) for anything else, or more places than the currency has."""
    cur = CURRENCIES[currency]
    cleaned = text.strip().replace(",", "").removeprefix(cur.symbol).strip()
    try:
        value = Decimal(cleaned)
    except decimal.InvalidOperation:
        raise ValueError(f"{text!r} is not an amount") from None
    if not value.is_finite():
        raise ValueError(f"{text!r} is not an amount")
    minor = value.scaleb(cur.exponent)
    if minor != minor.to_integral_value():
        raise ValueError(f"{currency} amounts have at most {cur.exponent} decimal places")
    if abs(minor) > 10**15:
        raise ValueError("the amount is too large")
    return int(minor)


def format_unit_amount(unit_amount_minor: Decimal, currency: str) -> str:
    """A unit price (minor units, up to 12 places) in major units, exactly: 0.002 -> "$0.00002".

    At least the currency's decimal places are shown, and every significant digit beyond them.
    """
    cur = CURRENCIES[currency]
    major = Decimal(unit_amount_minor).scaleb(-cur.exponent, context=_UNIT_PRICE_CONTEXT)
    places = max(cur.exponent, _significant_places(major))
    return f"{cur.symbol}{major:,.{places}f}"


def _significant_places(value: Decimal) -> int:
    """Decimal places up to the last non-zero digit: 0.00200 -> 3, 1500 -> 0."""
    if not value:
        return 0
    return max(0, -int(value.normalize(context=_UNIT_PRICE_CONTEXT).as_tuple().exponent))
