"""How a meter's quantity reads for people: exact, with thousands separators and its unit."""

from __future__ import annotations

from decimal import Decimal

from metering.serializers import decimal_text


def format_quantity(quantity: Decimal, unit: str = "") -> str:
    """An exact quantity with thousands separators and its unit: "1,500,000.5 tokens"."""
    text = f"{Decimal(decimal_text(Decimal(quantity))):,f}"
    if not unit:
        return text
    plural = Decimal(quantity) != 1 and unit.isalpha() and unit.islower() and unit[-1] != "s"
    return f"{text} {unit}{'s' if plural else ''}"
