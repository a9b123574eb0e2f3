"""The invoice document: one print-ready HTML page per invoice, from its stored lines.

The page is rendered from what the close stored (each line's amount and its pricing record,
worded by `pricing.describe_price` as the summary e-mail and the portal word it), never
re-rated, so the document always says what the invoice says. The template takes
`invoice`, `customer` and `lines` (plus preformatted `period` and `total`) and has no admin
links, so the customer portal can render the same page with `invoice_document_context`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.template.loader import render_to_string

from invoicing.models import Invoice, InvoiceLine
from invoicing.pricing import describe_line_price
from metering import localtime
from metering.currencies import format_minor
from metering.units import format_quantity

TEMPLATE = "invoicing/invoice_document.html"


@dataclass(frozen=True)
class DocumentLine:
    """A stored invoice line, formatted for people."""

    position: int
    kind: str  # usage | adjustment | cap_credit
    kind_label: str
    meter: str  # meter code, "" for cap credits
    description: str
    quantity: str  # with the meter's unit; "" for cap credits
    price: str  # how the line was priced (`pricing.describe_price`), as the e-mail says it
    amount: str  # formatted in the invoice currency


@dataclass(frozen=True)
class DocumentPeriod:
    local: str  # in the customer's time zone
    utc: str
    timezone: str


def _local_period(start: datetime, end: datetime, tz_name: str) -> DocumentPeriod:
    zone = localtime.zone_named(tz_name)
    return DocumentPeriod(
        local=localtime.local_span(start, end, zone),
        utc=localtime.local_span(start, end, localtime.zone_named("UTC")),
        timezone=localtime.zone_label(zone),
    )


def document_line(line: InvoiceLine, currency: str) -> DocumentLine:
    unit = line.meter.unit if line.meter is not None else ""
    is_credit = line.kind == InvoiceLine.Kind.CAP_CREDIT
    return DocumentLine(
        position=line.position,
        kind=line.kind,
        kind_label=InvoiceLine.Kind(line.kind).label,
        meter=line.meter.code if line.meter is not None else "",
        description=line.description,
        quantity="" if is_credit else format_quantity(line.quantity, unit),
        price=describe_line_price(line, currency=currency),
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
