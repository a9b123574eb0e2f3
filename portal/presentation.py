"""The dashboard's charts from daily series, with quantities worded for people."""

from __future__ import annotations

from decimal import Decimal

from metering import aggregations
from metering.units import format_quantity
from portal import charts
from portal.selectors import DailySeries


def series_charts(series: list[DailySeries]) -> list[charts.BarChart]:
    """One bar chart per meter (units differ too much to share an axis), coloured by meter."""
    result = []
    for index, item in enumerate(series):
        meter = item.meter
        aggregation = aggregations.of(meter)

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
                integer=aggregation.whole,
                additive=aggregation.additive,
            )
        )
    return result
