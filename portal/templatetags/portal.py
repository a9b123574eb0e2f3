"""Template filters for the portal: money with the currency's symbol and exponent, quantities."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from django import template

from invoicing.documents import format_quantity
from metering.currencies import format_minor

register = template.Library()


@register.filter
def money(amount_minor: int | None, currency: str) -> str:
    """{{ line.amount_minor|money:currency }} -> "$1,234.56" ("—" for no amount)."""
    if amount_minor is None:
        return "—"
    return format_minor(int(amount_minor), currency)


@register.filter
def quantity(value: Decimal | None, unit: str = "") -> str:
    """{{ line.quantity|quantity:meter.unit }} -> "1,500,000.5 tokens"."""
    if value is None:
        return "—"
    return format_quantity(Decimal(value), unit)


@register.filter
def approx_quantity(value: Decimal | None, unit: str = "") -> str:
    """A projected quantity, rounded for reading: "≈ 1,760,343 tokens", "≈ 4.69 tasks"."""
    if value is None:
        return "—"
    value = Decimal(value)
    places = Decimal(1) if abs(value) >= 100 else Decimal("0.01")
    return "≈ " + format_quantity(value.quantize(places, rounding=ROUND_HALF_UP), unit)


@register.filter
def get_item(mapping: dict, key: object) -> object:
    return mapping.get(key)
