"""The dashboard's charts from daily series, with quantities worded for people."""

from __future__ import annotations

from decimal import Decimal

from metering.models import Meter
from metering.units import format_quantity
from portal import charts
from portal.selectors import DailySeries


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
