"""The invoice document: one print-ready HTML page per invoice, from its stored lines, and the
same page as a PDF (WeasyPrint), which the invoice e-mail attaches and the portal and admin
offer for download.

What an accountant looks for is on it: the seller (legal name, address, tax id, from the
BILLING_SELLER_* settings), the customer's billing details, the issue and due dates, whether
and when it was paid, the credit notes that reduce it and the amount still due.

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

from django.conf import settings
from django.template.loader import render_to_string
from django.utils import timezone

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


@dataclass(frozen=True)
class Seller:
    name: str
    address_lines: list[str]
    tax_id: str
    email: str


@dataclass(frozen=True)
class DocumentCredit:
    number: str
    issued: str
    reason: str
    amount: str  # formatted, as a negative amount


def seller() -> Seller:
    address = settings.BILLING_SELLER_ADDRESS.replace("\\n", "\n")
    return Seller(
        name=settings.BILLING_SELLER_NAME,
        address_lines=[line.strip() for line in address.splitlines() if line.strip()],
        tax_id=settings.BILLING_SELLER_TAX_ID,
        email=settings.BILLING_SELLER_EMAIL,
    )


def payment_state(invoice: Invoice, *, now: datetime | None = None) -> str:
    """Paid (with its date), due (with its date), overdue, void, uncollectible or draft."""
    customer = invoice.customer
    status = invoice.status
    if status == Invoice.Status.PAID:
        return f"Paid on {localtime.customer_time(invoice.paid_at, customer)}"
    if status == Invoice.Status.VOID:
        return "Void: nothing is owed"
    if status == Invoice.Status.UNCOLLECTIBLE:
        return "Written off as uncollectible"
    if status == Invoice.Status.DRAFT:
        return "Draft: not charged until finalized"
    due = localtime.customer_time(invoice.due_at, customer)
    if invoice.due_at is not None and invoice.due_at < (now or timezone.now()):
        return f"Overdue since {due}"
    return f"Due by {due}" if due else "Due"


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
    """Everything the document template needs, in five queries."""
    customer = invoice.customer
    currency = invoice.currency
    lines = invoice.lines.select_related("meter").order_by("position")
    credits = list(invoice.credit_notes.order_by("issued_at", "pk"))
    credited = sum(note.total_minor for note in credits)
    return {
        "invoice": invoice,
        "customer": customer,
        "customer_address_lines": [
            line.strip() for line in customer.billing_address.splitlines() if line.strip()
        ],
        "seller": seller(),
        "lines": [document_line(line, currency) for line in lines],
        "period": _local_period(invoice.period.start, invoice.period.end, customer.timezone),
        "issued": localtime.customer_time(invoice.finalized_at, customer),
        "due": localtime.customer_time(invoice.due_at, customer),
        "paid": localtime.customer_time(invoice.paid_at, customer),
        "payment_state": payment_state(invoice),
        "credits": [
            DocumentCredit(
                number=note.number,
                issued=localtime.customer_time(note.issued_at, customer),
                reason=note.reason,
                amount=format_minor(-note.total_minor, currency),
            )
            for note in credits
        ],
        "total": format_minor(invoice.total_minor, currency),
        "amount_due": format_minor(amount_due_minor(invoice, credited), currency),
    }


def amount_due_minor(invoice: Invoice, credited_minor: int) -> int:
    """What the customer still owes on the invoice: its total less its credit notes while it
    is finalized (or a draft's total); nothing once paid, void or written off."""
    if invoice.status in (Invoice.Status.DRAFT, Invoice.Status.FINALIZED):
        return max(invoice.total_minor - credited_minor, 0)
    return 0


def render_invoice_document(invoice: Invoice) -> str:
    """The invoice as a self-contained, print-ready HTML page (no external resources)."""
    return render_to_string(TEMPLATE, invoice_document_context(invoice))


def render_invoice_pdf(invoice: Invoice) -> bytes:
    """The same document as a PDF (A4, the page's print styles), rendered by WeasyPrint from
    the HTML alone: the page loads nothing, so no URL is fetched."""
    from weasyprint import HTML  # imported on use: it loads Pango, which most requests need not

    document = HTML(string=render_invoice_document(invoice), url_fetcher=_fetch_nothing)
    return document.write_pdf()


def _fetch_nothing(url: str, *args: Any, **kwargs: Any) -> Any:
    raise ValueError(f"the invoice document loads no resources ({url[:80]})")


def document_filename(invoice: Invoice, extension: str) -> str:
    name = invoice.number or f"draft-{invoice.pk}"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:80]
    return f"invoice-{safe}.{extension}"
