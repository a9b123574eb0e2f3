"""Template filters for the portal: money with the currency's symbol and exponent, quantities,
and the dashboard's charts."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from django import template
from django.utils.html import escape
from django.utils.safestring import mark_safe

from metering.currencies import format_minor
from metering.units import format_quantity
from portal.charts import BarChart

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


@register.simple_tag
def chart_figure(chart: BarChart) -> str:
    """One meter's bar chart as inline SVG with its data table (`portal/charts.py` computes
    the geometry). Built here rather than with template loops: a 30-day dashboard has three
    charts of ~100 elements each, and rendering them node by node was a third of the page.
    Coordinates are numbers formatted by `charts`; every text is escaped."""
    e = escape
    ticks = "\n".join(
        f'<line class="grid-line" x1="{chart.left}" x2="{chart.right_edge}" y1="{e(t.y)}"'
        f' y2="{e(t.y)}"/><text class="axis-label" x="{chart.left - 6}" y="{e(t.y)}"'
        f' text-anchor="end" dominant-baseline="middle">{e(t.label)}</text>'
        for t in chart.ticks
    )
    colour = e(chart.colour)
    bars = "\n".join(
        f'<rect class="bar" x="{e(b.x)}" y="{e(b.y)}" width="{e(b.width)}"'
        f' height="{e(b.height)}" fill="{colour}"><title>{e(b.title)}</title></rect>'
        for b in chart.bars
    )
    labels = "\n".join(
        f'<text class="axis-label" x="{e(label.x)}" y="{chart.baseline + 16}"'
        f' text-anchor="middle">{e(label.label)}</text>'
        for label in chart.x_labels
    )
    rows = "".join(
        f'<tr><td>{e(day.strftime(chart.row_format))}</td><td class="num">{e(value)}</td></tr>'
        for day, value in chart.rows
    )
    code, name, unit, summary = e(chart.code), e(chart.name), e(chart.unit), e(chart.summary)
    per = e(chart.per)
    return mark_safe(  # noqa: S308 - built from escaped texts and formatted numbers only
        f'<figure class="chart" data-meter="{code}">\n'
        f'<svg viewBox="0 0 {chart.width} {chart.height}" role="img" aria-label="{summary}"'
        ' xmlns="http://www.w3.org/2000/svg">\n'
        f'<title id="chart-{code}-title">{name} per {per}</title>\n'
        f'<desc id="chart-{code}-desc">{summary}</desc>\n'
        f"{ticks}\n"
        f'<line class="baseline" x1="{chart.left}" x2="{chart.right_edge}"'
        f' y1="{chart.baseline}" y2="{chart.baseline}"/>\n'
        f"{bars}\n{labels}\n"
        f'<text class="axis-label" x="4" y="{chart.top}" dominant-baseline="hanging"'
        f' transform="rotate(-90 4 {chart.top})" text-anchor="end">{unit}s</text>\n'
        "</svg>\n"
        f"<figcaption>{name} ({unit}s per {per})</figcaption>\n"
        "<details>\n"
        f'<summary>Data table<span class="visually-hidden"> for {name}</span></summary>\n'
        '<div class="table-wrap">\n<table class="small">\n'
        f'<thead><tr><th scope="col">{per.capitalize()}</th>'
        f'<th scope="col" class="num">{name}</th></tr></thead>\n'
        f"<tbody>{rows}</tbody>\n</table>\n</div>\n</details>\n</figure>"
    )
