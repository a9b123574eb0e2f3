"""Month-end in the back office: the billing overview (the admin's front page), "Run the
billing cycle now", and the month's CSV exports (invoices, invoice lines, credit notes, the
revenue summary), streamed.

Thin: figures come from invoicing.month_end (reads only), the run from
billing_cycle.services.run_billing_cycle, CSV cells through portal.spreadsheet's neutralisation
(the one home of that rule). Every page is behind the admin site's login and permissions;
running the cycle needs the permission that "Close now" needs and is audited with its user and
outcome; exports need the invoice view permission.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseBase,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from audit.services import record_audit
from billing_cycle import services
from invoicing import month_end
from invoicing.documents import amount_due_minor
from metering.currencies import exponent, format_minor
from metering.serializers import decimal_text
from portal import charts
from portal.spreadsheet import spreadsheet_safe

EXPORTS = {
    "invoices": "Invoices",
    "lines": "Invoice lines",
    "credit-notes": "Credit notes",
    "revenue": "Revenue summary",
}


def _link(figure: month_end.Figure) -> str:
    if not figure.changelist:
        return ""
    query = f"?{urlencode(figure.query)}" if figure.query else ""
    return reverse(figure.changelist) + query


def _worded(figures: Iterable[month_end.Figure]) -> list[dict[str, Any]]:
    return [
        {
            "label": f.label,
            "count": f.count,
            "amounts": [format_minor(amount, cur) for cur, amount in sorted(f.amounts.items())],
            "url": _link(f),
        }
        for f in figures
    ]


def _revenue_chart(currency: str, rows: list[month_end.RevenueMonth]) -> charts.BarChart:
    scale = Decimal(10) ** exponent(currency)

    def worded(value: Decimal) -> str:
        return format_minor(int(value * scale), currency)

    return charts.bar_chart(
        code=f"revenue-{currency.lower()}",
        name=f"Invoiced ({currency})",
        unit=f"{currency} amount",
        colour=charts.PALETTE[0],
        days=[(row.month.start.date(), Decimal(row.invoiced) / scale) for row in rows],
        format_value=worded,
        per="month",
        label_format="%b",
        row_format="%B %Y",
        summary_format="%B %Y",
    )


def overview_view(request: HttpRequest) -> TemplateResponse:
    """The admin's front page: what is due, what is stuck, revenue, then the apps."""
    site = admin.site
    now = timezone.now()
    figures = month_end.overview(now=now)
    months = [
        {
            "month": item["month"],
            "periods": _worded(item["periods"]),
            "invoices": _worded(item["invoices"]),
        }
        for item in figures["months"]
    ]
    revenue = [
        {
            "currency": currency,
            "chart": _revenue_chart(currency, rows),
            "rows": [
                {
                    "month": row.month.label,
                    "invoiced": format_minor(row.invoiced, currency),
                    "collected": format_minor(row.collected, currency),
                    "outstanding": format_minor(row.outstanding, currency),
                }
                for row in reversed(rows)
            ],
        }
        for currency, rows in figures["revenue"].items()
    ]
    current = figures["months"][0]["month"]
    context = {
        **site.each_context(request),
        "title": "Billing overview",
        "subtitle": None,
        "now": now,
        "months": months,
        "attention": _worded(figures["attention"]),
        "upcoming": figures["upcoming"],
        "revenue": revenue,
        "app_list": site.get_app_list(request),
        "export_kinds": EXPORTS.items(),
        "export_months": [current.key, current.previous().key],
        "may_run": request.user.has_perm("invoicing.change_billingperiod"),
    }
    return TemplateResponse(request, "admin/billing_overview.html", context)


@require_POST
def run_cycle_view(request: HttpRequest) -> HttpResponse:
    """Run the billing cycle now (as beat does each minute) and report what it did, what waits
    and why, and what failed; audited with the user."""
    if not request.user.has_perm("invoicing.change_billingperiod"):
        raise PermissionDenied
    if request.POST.get("run") != "now":  # only the overview's button runs it
        messages.error(request, "Nothing was run: use “Run the billing cycle now”.")
        return HttpResponseRedirect(reverse("admin:index"))
    now = timezone.now()
    report = services.run_billing_cycle(now=now, explain=True)
    counts = report.counts()
    record_audit(
        action="admin.billing_cycle_run",
        obj=request.user,  # type: ignore[arg-type]
        user=request.user,
        data={"now": now.isoformat(), **counts},
    )
    done = report.done
    if done:
        shown = "; ".join(str(e) for e in done[:20])
        more = f" (and {len(done) - 20} more)" if len(done) > 20 else ""
        messages.success(request, f"Did {len(done)}: {shown}{more}")
    else:
        messages.info(request, "Nothing was due: the cycle did nothing.")
    for label, entries, level in (
        ("Waiting", report.waiting, messages.WARNING),
        ("Failed", report.failed, messages.ERROR),
    ):
        if entries:
            shown = "; ".join(str(e) for e in entries[:20])
            more = f" (and {len(entries) - 20} more)" if len(entries) > 20 else ""
            messages.add_message(request, level, f"{label} ({len(entries)}): {shown}{more}")
    return HttpResponseRedirect(reverse("admin:index"))


# --- Exports ----------------------------------------------------------------------------------


class _Echo:
    def write(self, value: str) -> str:
        return value


def _rows(header: list[str], rows: Iterable[list[Any]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(header)
    for row in rows:
        yield writer.writerow([spreadsheet_safe("" if cell is None else str(cell)) for cell in row])


def _when(moment: Any) -> str:
    return moment.isoformat() if moment else ""


def invoice_rows(month: month_end.Month) -> Iterator[list[Any]]:
    for invoice in month_end.invoices_in(month).iterator(chunk_size=500):
        credited = invoice.credited  # type: ignore[attr-defined]
        yield [
            invoice.number or f"DRAFT-{invoice.pk}",
            invoice.status,
            invoice.customer.external_id,
            invoice.customer.name,
            invoice.customer.tax_id,
            _when(invoice.period.start),
            _when(invoice.period.end),
            invoice.currency,
            invoice.total_minor,
            credited,
            amount_due_minor(invoice, credited),
            _when(invoice.finalized_at),
            _when(invoice.due_at),
            _when(invoice.paid_at),
            _when(invoice.voided_at),
        ]


INVOICE_HEADER = [
    "number",
    "status",
    "customer_id",
    "customer_name",
    "customer_tax_id",
    "period_start",
    "period_end",
    "currency",
    "total_minor",
    "credited_minor",
    "amount_due_minor",
    "issued_at",
    "due_at",
    "paid_at",
    "voided_at",
]
LINE_HEADER = [
    "invoice_number",
    "invoice_status",
    "customer_id",
    "currency",
    "position",
    "kind",
    "meter",
    "description",
    "quantity",
    "amount_minor",
    "credited_minor",
    "pricing",
]
CREDIT_NOTE_HEADER = [
    "number",
    "invoice_number",
    "customer_id",
    "currency",
    "total_minor",
    "issued_at",
    "reason",
    "lines",
]
REVENUE_HEADER = ["month", "currency", "invoiced_minor", "collected_minor", "outstanding_minor"]


def line_rows(month: month_end.Month) -> Iterator[list[Any]]:
    from invoicing.pricing import describe_line_price

    for line in month_end.lines_in(month).iterator(chunk_size=2000):
        invoice = line.invoice
        yield [
            invoice.number or f"DRAFT-{invoice.pk}",
            invoice.status,
            invoice.customer.external_id,
            invoice.currency,
            line.position,
            line.kind,
            line.meter.code if line.meter else "",
            line.description,
            decimal_text(line.quantity),
            line.amount_minor,
            line.credited,  # type: ignore[attr-defined]
            describe_line_price(line, currency=invoice.currency),
        ]


def credit_note_rows(month: month_end.Month) -> Iterator[list[Any]]:
    for note in month_end.credit_notes_in(month).prefetch_related("lines__invoice_line"):
        yield [
            note.number,
            note.invoice.number,
            note.invoice.customer.external_id,
            note.currency,
            note.total_minor,
            _when(note.issued_at),
            note.reason,
            "; ".join(
                f"line {cl.invoice_line.position}: {cl.amount_minor}" for cl in note.lines.all()
            ),
        ]


def revenue_rows(month: month_end.Month) -> Iterator[list[Any]]:
    for currency, rows in month_end.revenue_by_month(until=month).items():
        for row in rows:
            yield [row.month.key, currency, row.invoiced, row.collected, row.outstanding]


@require_GET
def export_view(request: HttpRequest) -> HttpResponseBase:
    """`?kind=invoices|lines|credit-notes|revenue&month=YYYY-MM`: the month's CSV, streamed,
    with spreadsheet-safe cells."""
    kind = request.GET.get("kind", "")
    if not request.user.has_perm("invoicing.view_invoice"):
        raise PermissionDenied
    try:
        month = month_end.Month.parse(request.GET.get("month", ""))
    except ValueError as exc:
        return HttpResponseBadRequest(f"{exc}\n", content_type="text/plain; charset=utf-8")
    producers = {
        "invoices": (INVOICE_HEADER, invoice_rows),
        "lines": (LINE_HEADER, line_rows),
        "credit-notes": (CREDIT_NOTE_HEADER, credit_note_rows),
        "revenue": (REVENUE_HEADER, revenue_rows),
    }
    if kind not in producers:
        return HttpResponseBadRequest(
            f"no export named {kind[:40]!r}: one of {', '.join(producers)}\n",
            content_type="text/plain; charset=utf-8",
        )
    header, rows = producers[kind]
    response = StreamingHttpResponse(
        _rows(header, rows(month)), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{kind}-{month.key}.csv"'
    response["Cache-Control"] = "no-store"
    return response  # a GET reads only: an export changes nothing, so nothing is audited


def urls() -> list[Any]:
    """Mounted before the admin site's own URLs (billing_project/urls.py): `admin/` itself is
    the overview, so the admin's "Home" leads to it."""
    wrap = admin.site.admin_view
    return [
        path("admin/", wrap(overview_view), name="billing-overview"),
        path("admin/billing/run-cycle/", wrap(run_cycle_view), name="billing-run-cycle"),
        path("admin/billing/export/", wrap(export_view), name="billing-export"),
    ]
