"""Credit notes in the back office: "Issue a credit note" on a finalized invoice's page (a form
with an amount per creditable line and a required reason), the credit-note list (read-only,
filterable, with each note's lines), and retrying a credit note's failed Stripe delivery.

Thin: the form parses amounts in the currency's major units (metering.currencies.parse_major)
and calls invoicing.services.credit_notes.issue_credit_note, which validates, numbers, audits
(with the user) and queues the Stripe delivery; its refusal is shown on the form, nothing
written.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from invoicing.models import CreditNote, CreditNoteLine, Invoice, InvoiceLine
from invoicing.services import credit_notes
from invoicing.stripe import credit_notes as stripe_credit_notes
from metering.currencies import format_minor, parse_major
from metering.localtime import customer_time


class CreditNoteForm(forms.Form):
    """One optional amount per line that can still be credited, and the reason."""

    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=credit_notes.REASON_MAX,
        help_text="Printed on the credit note and recorded in the audit log.",
    )

    def __init__(self, *args: Any, invoice: Invoice, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.invoice = invoice
        credited = credit_notes.credited_by_line(invoice.pk)
        self.rows: list[tuple[InvoiceLine, str, str]] = []
        for line in invoice.lines.select_related("meter").order_by("position"):
            most = credit_notes.creditable_minor(line, credited)
            if most <= 0:
                continue
            name = f"line_{line.pk}"
            self.fields[name] = forms.CharField(
                required=False,
                max_length=32,
                label=f"Line {line.position}: {line.description}",
                help_text=f"up to {format_minor(most, invoice.currency)}",
                widget=forms.TextInput(attrs={"size": 12, "inputmode": "decimal"}),
            )
            self.rows.append((line, name, format_minor(line.amount_minor, invoice.currency)))

    def credit_lines(self) -> list[credit_notes.CreditLine]:
        result = []
        for line, name, _ in self.rows:
            text = (self.cleaned_data.get(name) or "").strip()
            if not text:
                continue
            try:
                amount = parse_major(text, self.invoice.currency)
            except ValueError as exc:
                self.add_error(name, str(exc))
                continue
            result.append(credit_notes.CreditLine(invoice_line_id=line.pk, amount_minor=amount))
        return result


def invoice_urls(model_admin: admin.ModelAdmin) -> list[Any]:
    """The invoice admin's extra page: /admin/invoicing/invoice/<id>/credit-note/."""

    def view(request: HttpRequest, object_id: str) -> HttpResponse:
        return issue_view(model_admin, request, object_id)

    return [
        path(
            "<path:object_id>/credit-note/",
            model_admin.admin_site.admin_view(view),
            name="invoicing_invoice_credit_note",
        )
    ]


def issue_view(model_admin: admin.ModelAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    invoice = model_admin.get_object(request, unquote(object_id))
    if invoice is None:
        raise Http404("no such invoice")
    if not request.user.has_perm("invoicing.add_creditnote"):
        raise PermissionDenied
    change_url = reverse("admin:invoicing_invoice_change", args=[invoice.pk])
    form = CreditNoteForm(request.POST or None, invoice=invoice)
    if request.method == "POST" and form.is_valid():
        lines = form.credit_lines()
        if form.is_valid():  # amounts parsed
            try:
                note = credit_notes.issue_credit_note(
                    invoice_id=invoice.pk,
                    lines=lines,
                    reason=form.cleaned_data["reason"],
                    now=timezone.now(),
                    user=request.user,
                )
            except credit_notes.CreditNoteInvalid as exc:
                form.add_error(None, str(exc))
            else:
                model_admin.message_user(
                    request,
                    f"Issued credit note {note.number} for "
                    f"{format_minor(note.total_minor, note.currency)} against {invoice}.",
                    level=messages.SUCCESS,
                )
                return HttpResponseRedirect(change_url)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"Issue a credit note against {invoice}",
        "opts": model_admin.opts,
        "invoice": invoice,
        "total": format_minor(invoice.total_minor, invoice.currency),
        "form": form,
        "rows": [(line, form[name], amount) for line, name, amount in form.rows],
        "creditable": invoice.status in credit_notes.CREDITABLE,
        "change_url": change_url,
    }
    return TemplateResponse(request, "admin/invoicing/credit_note_form.html", context)


@admin.display(description="credit notes")
def credit_notes_of(invoice: Invoice) -> str:
    """The invoice page's summary: its credit notes and the link to issue one."""
    notes = list(invoice.credit_notes.order_by("issued_at", "pk"))
    listed = format_html_join(
        "",
        '<li><a href="{}">{}</a> {} ({})</li>',
        (
            (
                reverse("admin:invoicing_creditnote_change", args=[note.pk]),
                note.number,
                format_minor(-note.total_minor, note.currency),
                note.reason[:80],
            )
            for note in notes
        ),
    )
    link = ""
    if invoice.status in credit_notes.CREDITABLE:
        url = reverse("admin:invoicing_invoice_credit_note", args=[invoice.pk])
        link = format_html('<a class="button" href="{}">Issue a credit note</a>', url)
    return format_html("<ul>{}</ul>{}", listed, link) if notes else (link or "-")


class CreditNoteLineInline(admin.TabularInline):
    model = CreditNoteLine
    fields = readonly_fields = ("position", "invoice_line", "description", "amount")
    extra = 0
    can_delete = False

    @admin.display(description="amount")
    def amount(self, line: CreditNoteLine) -> str:
        return format_minor(line.amount_minor, line.credit_note.currency)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(CreditNote)
class CreditNoteAdmin(admin.ModelAdmin):
    """Read-only: a credit note is issued from its invoice's page and never changes."""

    list_display = ["number", "invoice_link", "customer", "total", "issued", "stripe"]
    list_filter = [("issued_at", admin.DateFieldListFilter), "currency", "stripe_sync__status"]
    list_select_related = ["invoice__customer", "stripe_sync"]
    search_fields = ["number", "invoice__number", "invoice__customer__external_id"]
    date_hierarchy = "issued_at"
    inlines = [CreditNoteLineInline]
    fields = readonly_fields = (
        "number",
        "invoice_link",
        "customer",
        "total",
        "reason",
        "issued",
        "stripe",
        "stripe_credit_note_id",
    )
    actions = ["retry_stripe_delivery"]

    @admin.display(description="invoice", ordering="invoice__number")
    def invoice_link(self, note: CreditNote) -> str:
        url = reverse("admin:invoicing_invoice_change", args=[note.invoice_id])
        return format_html('<a href="{}">{}</a>', url, note.invoice)

    @admin.display(description="customer")
    def customer(self, note: CreditNote) -> str:
        return str(note.invoice.customer)

    @admin.display(description="amount", ordering="total_minor")
    def total(self, note: CreditNote) -> str:
        return format_minor(note.total_minor, note.currency)

    @admin.display(description="issued (customer's zone)", ordering="issued_at")
    def issued(self, note: CreditNote) -> str:
        return customer_time(note.issued_at, note.invoice.customer)

    @admin.display(description="Stripe")
    def stripe(self, note: CreditNote) -> str:
        sync = getattr(note, "stripe_sync", None)
        if sync is None:
            return "-"
        error = f": {sync.last_error}" if sync.last_error else ""
        return f"{sync.get_status_display()}{error}"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("invoicing.add_creditnote")

    @admin.action(description="Retry the Stripe delivery", permissions=["retry"])
    def retry_stripe_delivery(self, request: HttpRequest, queryset: QuerySet[CreditNote]) -> None:
        """Reports what it queued again and what it refused, with why."""
        done, refused = [], []
        for note in queryset.select_related("stripe_sync").order_by("pk"):
            if getattr(note, "stripe_sync", None) is None:
                refused.append(f"{note} (not for Stripe)")
                continue
            before = stripe_credit_notes.retry(
                credit_note_id=note.pk, now=timezone.now(), user=request.user
            )
            if before is None:
                refused.append(f"{note} (delivered already)")
            else:
                done.append(f"{note} (was {before})")
        if done:
            self.message_user(request, f"Queued again: {', '.join(done)}", messages.SUCCESS)
        if refused:
            self.message_user(request, f"Refused: {', '.join(refused)}", messages.WARNING)
