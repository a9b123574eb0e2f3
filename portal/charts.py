"""Server-rendered bar charts: the geometry of one meter's daily usage as inline SVG.

Pure functions (no Django), so the chart needs no JavaScript and no external library. All
arithmetic is Decimal; coordinates are rounded to 0.1 of a viewBox unit when printed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

WIDTH = 560  # near the rendered width in a two-column grid, so text stays legible
HEIGHT = 220
LEFT, RIGHT, TOP, BOTTOM = 56, 24, 12, 30  # plot margins, in viewBox units
PLOT_W = WIDTH - LEFT - RIGHT
PLOT_H = HEIGHT - TOP - BOTTOM
GAP = Decimal("0.2")  # share of a day's slot left empty between bars

# Colours with at least 3:1 contrast against white (WCAG 1.4.11 for graphics).
PALETTE = ["#1f5fbf", "#b3470b", "#2e7d32", "#7b1fa2", "#ad1457", "#00695c", "#5d4037"]


def _c(value: Decimal) -> str:
    """A coordinate as SVG text."""
    return str(value.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def compact(value: Decimal) -> str:
    """Short tick labels: 1500000 -> "1.5M", 2500 -> "2.5k", 0.25 -> "0.25"."""
    for threshold, suffix in ((Decimal(10) ** 9, "G"), (Decimal(10) ** 6, "M"), (1000, "k")):
        if abs(value) >= threshold:
            return _plain(value / threshold) + suffix
    return _plain(value)


def _plain(value: Decimal) -> str:
    text = f"{value.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def nice_step(maximum: Decimal, *, ticks: int = 4, integer: bool = False) -> Decimal:
    """A 1, 2 or 5 x 10^k step so that `ticks` steps cover `maximum` (at least 1 for counts)."""
    if maximum <= 0:
        return Decimal(1)
    raw = maximum / ticks
    magnitude = Decimal(1).scaleb(raw.adjusted())
    for factor in (1, 2, 5, 10):
        step = magnitude * factor
        if step >= raw:
            break
    return max(step, Decimal(1)) if integer else step


@dataclass(frozen=True)
class Bar:
    x: str
    y: str
    width: str
    height: str
    title: str  # the tooltip: "2026-11-20: 1,234 tokens"


@dataclass(frozen=True)
class Tick:
    y: str
    label: str


@dataclass(frozen=True)
class XLabel:
    x: str
    label: str


@dataclass(frozen=True)
class BarChart:
    code: str
    name: str
    unit: str
    colour: str
    bars: list[Bar]
    ticks: list[Tick]
    x_labels: list[XLabel]
    summary: str  # the chart's accessible description
    rows: list[tuple[date, str]]  # the data table behind the chart
    row_format: str = "%a %Y-%m-%d"  # how the table (and tooltips) name a bar's date
    per: str = "day"  # what one bar covers
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right_edge: int = WIDTH - RIGHT
    top: int = TOP
    baseline: int = HEIGHT - BOTTOM


def _label_every(days: int) -> int:
    return 1 if days <= 10 else 5 if days <= 35 else 15


def bar_chart(
    *,
    code: str,
    name: str,
    unit: str,
    colour: str,
    days: list[tuple[date, Decimal]],
    format_value: Callable[[Decimal], str],
    integer: bool = False,
    additive: bool = True,
    per: str = "day",
    label_format: str = "",
    row_format: str = "%a %Y-%m-%d",
    summary_format: str = "%Y-%m-%d",
) -> BarChart:
    """Bars for one meter's days (oldest first); `format_value(Decimal) -> str` words a value
    with its unit for tooltips and the table. `additive`: the days may be summed (sum and
    count meters), so the description states a total. Other series (months: the admin's
    revenue) name their step `per`, their axis labels `label_format` and their table rows
    `row_format`, and the description `summary_format` (strftime formats of the bar's date)."""
    maximum = max((value for _, value in days), default=Decimal(0))
    step = nice_step(maximum, integer=integer)
    top = step * (maximum / step).to_integral_value(rounding=ROUND_CEILING) if maximum else step
    slot = Decimal(PLOT_W) / max(len(days), 1)
    bar_width = slot * (1 - GAP)
    bars, labels, rows = [], [], []
    every = _label_every(len(days))
    for index, (day, value) in enumerate(days):
        height = Decimal(PLOT_H) * value / top
        x = LEFT + slot * index + slot * GAP / 2
        worded = format_value(value)
        rows.append((day, worded))
        if value > 0:
            # A visible sliver for tiny non-zero days, so they are not mistaken for zero.
            height = max(height, Decimal(1))
            bars.append(
                Bar(
                    x=_c(x),
                    y=_c(TOP + PLOT_H - height),
                    width=_c(bar_width),
                    height=_c(height),
                    title=f"{day.strftime(row_format)}: {worded}",
                )
            )
        from_end = len(days) - 1 - index
        if from_end % every == 0:
            label = day.strftime(label_format) if label_format else f"{day:%b} {day.day}"
            labels.append(XLabel(x=_c(LEFT + slot * index + slot / 2), label=label))
    ticks = []
    value = Decimal(0)
    while value <= top:
        ticks.append(Tick(y=_c(TOP + PLOT_H - Decimal(PLOT_H) * value / top), label=compact(value)))
        value += step
    busiest = max(days, key=lambda item: item[1]) if days else None
    total = sum((value for _, value in days), Decimal(0))
    if busiest is None or busiest[1] == 0:
        summary = f"{name} per {per}, last {len(days)} {per}s: no usage."
    else:
        summary = (
            f"{name} per {per}, last {len(days)} {per}s: "
            + (f"{format_value(total)} in total, " if additive else "")
            + f"busiest {per} {busiest[0].strftime(summary_format)} with "
            f"{format_value(busiest[1])}."
        )
    return BarChart(
        code=code,
        name=name,
        unit=unit,
        colour=colour,
        bars=bars,
        ticks=ticks,
        x_labels=labels,
        summary=summary,
        rows=rows,
        row_format=row_format,
        per=per,
    )
