"""The portal's pages. Thin: each view gets the logged-in user's customer (portal.access), reads
through selectors (GETs never write), writes through the owning app's services (budgets), and
renders a template.

Every object is looked up through that customer, so another customer's ids answer 404.
"""

from __future__ import annotations

import csv
import functools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.staticfiles import finders
from django.core.cache import cache
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse_lazy
from django.utils import timezone
from django.utils.cache import patch_cache_control
from django.views.decorators.http import (
    require_GET,
    require_http_methods,
    require_POST,
    require_safe,
)

from budgets import selectors as budget_selectors
from budgets import services as budget_services
from budgets.models import DEFAULT_THRESHOLDS, BudgetCap
from budgets.selectors import BudgetStatus
from invoicing.documents import (
    document_filename,
    invoice_document_context,
    render_invoice_document,
    render_invoice_pdf,
)
from invoicing.models import BillingPeriod, Invoice, InvoiceLine
from invoicing.pricing import describe_price
from invoicing.selectors import current_period
from metering.dimensions import describe_values
from metering.models import Customer
from metering.serializers import decimal_text
from portal import forms, selectors
from portal.access import customer_required
from portal.presentation import series_charts
from portal.spreadsheet import spreadsheet_safe

# The document is self-contained: it may load nothing (same policy as the admin's copy).
DOCUMENT_CSP = "default-src 'none'; style-src 'unsafe-inline'"
INVOICES_PER_PAGE = 25
SAVED_TEXT: dict[str | None, str] = {  # by the save's transition (None: none)
    "resumed": " Your agents may work again.",
    "paused": " The cap is already reached: your agents are asked to stop.",
}
STATUS_TEXT = {
    "active": "Active",
    "warning": "Warning: a threshold was crossed",
    "paused": "Paused: agents are asked to stop",
}

BREAKDOWN_CACHE_SECONDS = 60
FAVICON = "portal/favicon.ico"  # in portal/static/
FAVICON_MAX_AGE = 24 * 3600  # seconds


# --- Accounts --------------------------------------------------------------------------------


class LoginView(auth_views.LoginView):
    template_name = "portal/login.html"
    authentication_form = forms.PortalAuthenticationForm


class LogoutView(auth_views.LogoutView):
    next_page = "portal:login"  # a URL name: resolve_url reverses it


class PasswordResetView(auth_views.PasswordResetView):
    form_class = forms.PortalPasswordResetForm
    template_name = "portal/password_reset_form.html"
    email_template_name = "portal/password_reset_email.txt"
    subject_template_name = "portal/password_reset_subject.txt"
    success_url = reverse_lazy("portal:password_reset_done")


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "portal/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "portal/password_reset_confirm.html"
    success_url = reverse_lazy("portal:password_reset_complete")


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "portal/password_reset_complete.html"


# --- Dashboard -------------------------------------------------------------------------------


def budget_view_model(status: BudgetStatus) -> dict[str, Any]:
    """The progress bar: percent used (exact, and clamped for the bar) and threshold marks."""
    cap = status.cap_minor
    percent = status.spent_minor * 100 // cap if cap else 0
    return {
        "status": status,
        "status_text": STATUS_TEXT.get(status.status, status.status),
        "percent": percent,
        "bar_percent": min(percent, 100),
        "marks": [t for t in status.thresholds if 0 < t <= 100],
    }


def _usage_rows(usage: selectors.CurrentUsage) -> list[dict[str, Any]]:
    """The dashboard's rows: one per line of the current period, as the usage API has them.
    The lines of a meter priced by dimension (a rate card, DESIGN 4a) come under a heading
    row for their meter (its name, the dimensions and the meter's amounts), each row named by
    its group's values ("model=large, token_type=input")."""
    rows: list[dict[str, Any]] = []
    for line in usage.lines:
        row: dict[str, Any] = {
            "usage": line,
            "basis": describe_price(
                line.pricing,
                kind=InvoiceLine.Kind.USAGE,
                unit=line.meter.unit,
                currency=usage.currency,
            ),
            "group": "",
        }
        dimensions = line.pricing.dimensions
        if dimensions:
            names = [name for name, _ in dimensions]
            row["group"] = describe_values(names, tuple(value for _, value in dimensions))
            if not rows or rows[-1]["usage"].meter.pk != line.meter.pk:
                row["heading"] = {
                    "dimensions": ", ".join(names),
                    "amount_minor": sum(
                        other.amount_minor for other in usage.lines if other.meter == line.meter
                    ),
                    "projected_amount_minor": sum(
                        other.projected_amount_minor
                        for other in usage.lines
                        if other.meter == line.meter
                    ),
                }
        rows.append(row)
    return rows


@customer_required
@require_GET
def dashboard(request: HttpRequest, customer: Customer) -> HttpResponse:
    """The current period rated as the invoice will be, the budget and the daily chart: all
    read from the hourly rollups. The property breakdown, which reads events, is not computed
    here: the page links to it (`breakdown`) and a script loads it into the page afterwards."""
    now = timezone.now()
    options = forms.DashboardForm(request.GET)
    options.is_valid()
    days = options.cleaned_data.get("days") or 30
    prop = options.cleaned_data.get("property") or "agent_id"

    usage = selectors.current_usage(customer=customer, now=now)
    lines = _usage_rows(usage) if usage is not None else []
    budget = budget_selectors.get_budget_status(
        customer=customer, now=now, known=(usage.period, usage.total_minor) if usage else None
    )
    series = selectors.daily_usage(
        customer=customer,
        days=days,
        now=now,
        meters=[line.meter for line in usage.lines] if usage else [],
        all_meters=usage.meters if usage else None,
    )
    return render(
        request,
        "portal/dashboard.html",
        {
            "nav": "dashboard",
            "customer": customer,
            "usage": usage,
            "lines": lines,
            "budget": budget_view_model(budget),
            "charts": series_charts(series),
            "days": days,
            "day_choices": forms.DAY_CHOICES,
            "options": options,
            "property": prop,
        },
    )


@customer_required
@require_GET
def breakdown(request: HttpRequest, customer: Customer) -> HttpResponse:
    """The current period split by one property: a page of its own, or with `fragment=1` the
    section the dashboard's script puts into the dashboard.

    Splitting a period by a property reads its events (properties are not rolled up), so the
    result is kept for a minute in the shared cache and the panel says so.
    """
    options = forms.DashboardForm(request.GET)
    options.is_valid()
    days = options.cleaned_data.get("days") or 30
    prop = options.cleaned_data.get("property") or "agent_id"
    period = current_period(customer=customer, now=timezone.now())
    result = property_names = None
    if period is not None:
        cached = cache.get_or_set(
            # (breakdown, names); by the period's start: a period beat has not created yet
            # (read, not written, here) has no pk
            f"portal:breakdown2:{customer.pk}:{period.start.isoformat()}:{prop}",
            lambda: (
                selectors.property_breakdown(customer=customer, period=period, prop=prop),
                selectors.property_names(customer=customer, period=period),
            ),
            BREAKDOWN_CACHE_SECONDS,
        )
        assert cached is not None  # the default above is never None
        result, property_names = cached
    fragment = request.GET.get("fragment") == "1"
    return render(
        request,
        "portal/_breakdown.html" if fragment else "portal/breakdown.html",
        {
            "nav": "dashboard",
            "customer": customer,
            "period": period,
            "breakdown": result,
            "property_names": property_names or [],
            "options": options,
            "days": days,
            "property": prop,
        },
    )


# --- Invoices --------------------------------------------------------------------------------


@customer_required
@require_GET
def invoice_list(request: HttpRequest, customer: Customer) -> HttpResponse:
    page = Paginator(selectors.list_invoices(customer=customer), INVOICES_PER_PAGE).get_page(
        request.GET.get("page")
    )
    return render(
        request,
        "portal/invoice_list.html",
        {"nav": "invoices", "customer": customer, "page": page},
    )


def hosted_invoice_url(invoice: Invoice) -> str:
    """Stripe's hosted invoice page, if the invoice has one (only https links are shown)."""
    url = getattr(invoice, "stripe_hosted_invoice_url", "") or ""
    return url if url.startswith("https://") else ""


@customer_required
@require_GET
def invoice_detail(request: HttpRequest, customer: Customer, invoice_id: int) -> HttpResponse:
    invoice = get_object_or_404(
        Invoice.objects.select_related("period", "customer"), pk=invoice_id, customer=customer
    )
    document = invoice_document_context(invoice)
    return render(
        request,
        "portal/invoice_detail.html",
        {
            "nav": "invoices",
            "customer": customer,
            "invoice": invoice,
            "lines": document["lines"],
            "total": document["total"],
            "credits": document["credits"],
            "amount_due": document["amount_due"],
            "payment_state": document["payment_state"],
            "hosted_url": hosted_invoice_url(invoice),
        },
    )


@customer_required
@require_GET
def invoice_document(request: HttpRequest, customer: Customer, invoice_id: int) -> HttpResponse:
    invoice = get_object_or_404(
        Invoice.objects.select_related("period", "customer"), pk=invoice_id, customer=customer
    )
    response = HttpResponse(render_invoice_document(invoice))
    response["Content-Security-Policy"] = DOCUMENT_CSP
    if request.GET.get("download"):
        name = invoice.number or f"draft-{invoice.pk}"
        response["Content-Disposition"] = f'attachment; filename="invoice-{_safe(name)}.html"'
    return response


@customer_required
@require_GET
def invoice_pdf(request: HttpRequest, customer: Customer, invoice_id: int) -> HttpResponse:
    """The invoice document as a PDF download."""
    invoice = get_object_or_404(
        Invoice.objects.select_related("period", "customer"), pk=invoice_id, customer=customer
    )
    response = HttpResponse(render_invoice_pdf(invoice), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{document_filename(invoice, "pdf")}"'
    response["Cache-Control"] = "no-store"
    return response


# --- Usage export ----------------------------------------------------------------------------


class _Echo:
    """A file-like object whose write returns the line, so csv.writer feeds a generator."""

    def write(self, value: str) -> str:
        return value


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80]


def rfc3339_utc(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def csv_lines(customer: Customer, start: datetime, end: datetime) -> Iterator[str]:
    """The header, then one line per event: the columns the ingestion API takes, each cell
    made safe to open in a spreadsheet (portal.spreadsheet)."""
    writer = csv.writer(_Echo())
    yield writer.writerow(selectors.EXPORT_COLUMNS)
    for event_id, meter, quantity, timestamp, properties in selectors.export_events(
        customer=customer, start=start, end=end
    ):
        cells = [
            event_id,
            customer.external_id,
            meter,
            decimal_text(quantity),
            rfc3339_utc(timestamp),
            json.dumps(properties or {}, sort_keys=True, separators=(",", ":")),
        ]
        yield writer.writerow([spreadsheet_safe(cell) for cell in cells])


def _csv_response(
    customer: Customer, start: datetime, end: datetime, label: str
) -> StreamingHttpResponse:
    response = StreamingHttpResponse(
        csv_lines(customer, start, end), content_type="text/csv; charset=utf-8"
    )
    filename = f"usage-{_safe(customer.external_id)}-{_safe(label)}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


@customer_required
@require_GET
def export(request: HttpRequest, customer: Customer) -> HttpResponseBase:
    """Without parameters, the form; with `period` or `start`/`end`, the CSV (streamed)."""
    zone = selectors.customer_zone(customer)
    range_form = forms.ExportRangeForm(request.GET if "start" in request.GET else None)
    period_form = forms.ExportPeriodForm(request.GET if "period" in request.GET else None)
    if period_form.is_bound and period_form.is_valid():
        chosen = get_object_or_404(
            BillingPeriod, pk=period_form.cleaned_data["period"], customer=customer
        )
        label = f"{chosen.start.astimezone(zone):%Y%m%dT%H%M}"
        return _csv_response(customer, chosen.start, chosen.end, label)
    if range_form.is_bound and range_form.is_valid():
        first, last = range_form.cleaned_data["start"], range_form.cleaned_data["end"]
        start = selectors.local_midnight(first, zone)
        end = selectors.local_midnight(last + timedelta(days=1), zone)
        return _csv_response(customer, start, end, f"{first:%Y%m%d}-{last:%Y%m%d}")

    period = current_period(customer=customer, now=timezone.now())
    if not range_form.is_bound:
        today = timezone.now().astimezone(zone).date()
        first_day = period.start.astimezone(zone).date() if period else today
        range_form = forms.ExportRangeForm(initial={"start": first_day, "end": today})
    invalid = range_form.is_bound or period_form.is_bound
    return render(
        request,
        "portal/export.html",
        {
            "nav": "export",
            "customer": customer,
            "range_form": range_form,
            "period_form": period_form,
            "periods": selectors.recent_periods(customer=customer),
            "current_period": period,
        },
        status=400 if invalid else 200,
    )


# --- Budget ----------------------------------------------------------------------------------


def _budget_page(
    request: HttpRequest, customer: Customer, form: forms.BudgetForm, *, status: int = 200
) -> HttpResponse:
    budget = budget_selectors.get_budget_status(customer=customer, now=timezone.now())
    return render(
        request,
        "portal/budget.html",
        {
            "nav": "budget",
            "customer": customer,
            "form": form,
            "budget": budget_view_model(budget),
            "alerts": budget_selectors.list_budget_alerts(customer=customer),
            "history": budget_selectors.list_budget_history(customer=customer),
        },
        status=status,
    )


@customer_required
@require_http_methods(["GET", "POST"])
def budget(request: HttpRequest, customer: Customer) -> HttpResponse:
    currency = customer.currency
    if request.method == "POST":
        form = forms.BudgetForm(request.POST, currency=currency)
        if form.is_valid():
            try:
                status = budget_services.set_budget_cap(
                    customer=customer,
                    cap_minor=form.cleaned_data["cap"],
                    thresholds=form.cleaned_data["thresholds"],
                    action=form.cleaned_data["action"],
                    now=timezone.now(),
                    actor=request.user,
                )
            except budget_services.BudgetInvalid as exc:
                for field, message in exc.errors.items():
                    name = {"cap_minor": "cap"}.get(field, field)
                    form.add_error(name if name in form.fields else None, message)
            else:
                messages.success(request, "Budget saved." + SAVED_TEXT.get(status.transition, ""))
                return redirect("portal:budget")
        messages.error(request, "The budget was not saved: please correct the errors below.")
        return _budget_page(request, customer, form, status=400)
    cap = budget_selectors.get_budget_cap(customer=customer)
    initial = {
        "thresholds": ", ".join(str(t) for t in DEFAULT_THRESHOLDS),
        "action": BudgetCap.Action.ALERT,
    }
    if cap is not None:
        initial = {
            "cap": ""
            if cap.cap_minor is None
            else forms.minor_to_major_text(cap.cap_minor, currency),
            "thresholds": ", ".join(str(t) for t in cap.thresholds),
            "action": cap.action,
        }
    return _budget_page(request, customer, forms.BudgetForm(initial=initial, currency=currency))


@customer_required
@require_POST
def acknowledge(request: HttpRequest, customer: Customer) -> HttpResponse:
    try:
        budget_services.acknowledge_pause(customer=customer, now=timezone.now(), actor=request.user)
    except budget_services.NothingPaused:
        messages.info(request, "Nothing is paused: your agents are running.")
    else:
        messages.success(request, "Resumed: your agents may work for the rest of this period.")
    return redirect("portal:budget")


# --- The site's icon -------------------------------------------------------------------------


@functools.cache
def _favicon() -> bytes:
    path = finders.find(FAVICON)
    if path is None:  # it ships with the portal app: only a broken install lacks it
        raise FileNotFoundError(FAVICON)
    return Path(path).read_bytes()


@require_safe
def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico, which browsers ask for on every page (the admin, the API docs and the
    JSON answers too): the portal's icon, cached for a day."""
    response = HttpResponse(_favicon(), content_type="image/x-icon")
    patch_cache_control(response, public=True, max_age=FAVICON_MAX_AGE)
    return response
