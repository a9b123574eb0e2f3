"""Wording for people: how a meter is billed, and the dashboard's charts from daily series."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from metering.currencies import format_minor, format_unit_amount
from metering.models import Meter
from metering.units import format_quantity
from portal import charts
from portal.selectors import DailySeries


def billing_basis(pricing: dict[str, Any], *, unit: str, currency: str) -> str:
    """How a meter's quantity is billed, from a line's pricing record: "$0.05 per task",
    "per 60 minutes (rounded up), $1.50 each; minimum $5.00"."""
    model = pricing.get("model")
    if model is None:
        return "Not priced"
    parts: list[str] = []
    if model == "per_unit" and pricing.get("unit_amount_minor") is not None:
        parts.append(
            f"{format_unit_amount(Decimal(pricing['unit_amount_minor']), currency)} per "
            f"{unit or 'unit'}"
        )
    elif model == "package":
        size = format_quantity(Decimal(pricing["package_size"]), unit)
        each = format_minor(int(pricing["package_amount_minor"]), currency)
        parts.append(f"per {size} (rounded up), {each} each")
    elif model == "graduated":
        parts.append("graduated tiers")
    elif model == "volume":
        parts.append("volume tiers")
    included = Decimal(pricing.get("included_quantity") or "0")
    if included > 0:
        parts.append(f"{format_quantity(included, unit)} included")
    if int(pricing.get("minimum_minor") or 0) > 0:
        parts.append(f"minimum {format_minor(int(pricing['minimum_minor']), currency)}")
    text = "; ".join(parts)
    return text[:1].upper() + text[1:]


def series_charts(series: list[DailySeries]) -> list[charts.BarChart]:
    """One bar chart per meter (units differ too much to share an axis), coloured by meter."""
    result = []
    for index, item in enumerate(series):
        meter = item.meter

        def worded(value: Decimal, unit: str = meter.unit) -> str:
            return format_quantity(value, unit)

        result.append(
            charts.bar_chart(
                code=meter.code,
                name=meter.name,
                unit=meter.unit,
                colour=charts.PALETTE[index % len(charts.PALETTE)],
                days=item.days,
                format_value=worded,
                integer=meter.aggregation
                in {Meter.Aggregation.COUNT, Meter.Aggregation.UNIQUE_COUNT},
                additive=meter.aggregation in {Meter.Aggregation.SUM, Meter.Aggregation.COUNT},
            )
        )
    return result
