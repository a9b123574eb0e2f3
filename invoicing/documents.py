"""The invoice document: one print-ready HTML page per invoice, from its stored lines.

The page is rendered from what the close stored (each line's amount and its `pricing` record),
never re-rated, so the document always says what the invoice says. The template takes
`invoice`, `customer` and `lines` (plus preformatted `period` and `total`) and has no admin
links, so the customer portal can render the same page with `invoice_document_context`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.template.loader import render_to_string

from invoicing.models import Invoice, InvoiceLine
from metering.currencies import format_minor, format_unit_amount
from metering.units import format_quantity

TEMPLATE = "invoicing/invoice_document.html"


@dataclass(frozen=True)
class PortionRow:
    """One priced piece of a line: a tier reached, or the whole line for per-unit pricing."""

    label: str  # "Tier 1", or "" when the model has no tiers
    quantity: str  # with the meter's unit
    unit_amount: str  # in major units, e.g. "$0.00002"
    flat_amount: str  # "" when there is no flat fee


@dataclass(frozen=True)
class DocumentLine:
    """A stored invoice line, formatted for people."""

    position: int
    kind: str  # usage | adjustment | cap_credit
    kind_label: str
    meter: str  # meter code, "" for cap credits
    description: str
    quantity: str  # with the meter's unit; "" for cap credits
    model: str  # the price model's label, or "Not priced"
    portions: list[PortionRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # included units, packages, minimum
    amount: str = ""  # formatted in the invoice currency


@dataclass(frozen=True)
class DocumentPeriod:
    local: str  # in the customer's time zone
    utc: str
    timezone: str


def _local_period(start: datetime, end: datetime, tz_name: str) -> DocumentPeriod:
    try:
        zone = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        zone, tz_name = ZoneInfo("UTC"), "UTC"

    def span(tz: ZoneInfo) -> str:
        return f"{start.astimezone(tz):%Y-%m-%d %H:%M} to {end.astimezone(tz):%Y-%m-%d %H:%M}"

    return DocumentPeriod(
        local=f"{span(zone)} ({tz_name})", utc=f"{span(ZoneInfo('UTC'))} UTC", timezone=tz_name
    )


_MODEL_LABELS = {
    "per_unit": "Per unit",
    "graduated": "Graduated tiers",
    "volume": "Volume tiers",
    "package": "Package",
}


def _describe(
    pricing: dict[str, Any], *, unit: str, currency: str
) -> tuple[str, list[PortionRow], list[str]]:
    """The model label, the portions applied and notes, from a line's `pricing` record."""
    model = pricing.get("model")
    if model is None:
        if "cap_minor" in pricing:
            notes = [f"Budget cap {format_minor(int(pricing['cap_minor']), currency)}"]
            if "uncapped_minor" in pricing:
                uncapped = format_minor(int(pricing["uncapped_minor"]), currency)
                notes.append(f"usage rated at {uncapped} before the cap")
            return "Budget cap", [], notes
        return "Not priced", [], []

    portions: list[PortionRow] = []
    notes: list[str] = []
    included = Decimal(pricing.get("included_quantity") or "0")
    if included > 0:
        notes.append(f"{format_quantity(included, unit)} included")
    for portion in pricing.get("portions", []):
        if model == "package":
            size = Decimal(pricing["package_size"])
            packages = int(portion["packages"])
            amount = format_minor(int(pricing["package_amount_minor"]), currency)
            notes.append(
                f"{packages} package{'s' if packages != 1 else ''} of "
                f"{format_quantity(size, unit)} at {amount} each"
            )
            continue
        flat = int(portion.get("flat_amount_minor") or 0)
        tier = portion.get("tier")
        portions.append(
            PortionRow(
                label="" if tier is None else f"Tier {tier}",
                quantity=format_quantity(Decimal(portion["quantity"]), unit),
                unit_amount=format_unit_amount(Decimal(portion["unit_amount_minor"]), currency),
                flat_amount=format_minor(flat, currency) if flat else "",
            )
        )
    if model == "per_unit" and not portions and pricing.get("unit_amount_minor") is not None:
        # Nothing billable: still say what a unit costs.
        unit_amount = format_unit_amount(Decimal(pricing["unit_amount_minor"]), currency)
        notes.append(f"{unit_amount} per {unit or 'unit'}")
    if pricing.get("minimum_applied"):
        minimum = format_minor(int(pricing["minimum_minor"]), currency)
        notes.append(f"Minimum charge of {minimum} applied")
    return _MODEL_LABELS.get(model, str(model)), portions, notes


def document_line(line: InvoiceLine, currency: str) -> DocumentLine:
    unit = line.meter.unit if line.meter is not None else ""
    model, portions, notes = _describe(line.pricing or {}, unit=unit, currency=currency)
    is_credit = line.kind == InvoiceLine.Kind.CAP_CREDIT
    return DocumentLine(
        position=line.position,
        kind=line.kind,
        kind_label=InvoiceLine.Kind(line.kind).label,
        meter=line.meter.code if line.meter is not None else "",
        description=line.description,
        quantity="" if is_credit else format_quantity(line.quantity, unit),
        model=model,
        portions=portions,
        notes=notes,
        amount=format_minor(line.amount_minor, currency),
    )


def invoice_document_context(invoice: Invoice) -> dict[str, Any]:
    """Everything the document template needs, in four queries."""
    customer = invoice.customer
    lines = invoice.lines.select_related("meter").order_by("position")
    return {
        "invoice": invoice,
        "customer": customer,
        "lines": [document_line(line, invoice.currency) for line in lines],
        "period": _local_period(invoice.period.start, invoice.period.end, customer.timezone),
        "total": format_minor(invoice.total_minor, invoice.currency),
    }


def render_invoice_document(invoice: Invoice) -> str:
    """The invoice as a self-contained, print-ready HTML page (no external resources)."""
    return render_to_string(TEMPLATE, invoice_document_context(invoice))
