"""Back office for the Stripe backend: customer links, meter mappings, deliveries, the usage
report outbox and received webhooks, with links to the Stripe dashboard and retry actions.

Registered on the default admin site when imported (invoicing/admin.py imports it). The
functions at the top are meant for InvoiceAdmin and its line inline too: Stripe ids as
dashboard links, the delivery status, and an action that retries a failed delivery.
Every action calls a service in invoicing.stripe (customers, invoices, usage_reports), which
audits it with the user; the admin site audits the meter mappings' edits
(audit/audited_admin.py).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from invoicing.models import (
    Invoice,
    InvoiceLine,
    StripeCustomer,
    StripeInvoiceSync,
    StripeMeterMapping,
    StripeWebhookEvent,
    UsageReport,
)
from invoicing.services import invoices
from invoicing.stripe import customers, payment_methods, usage_reports
from invoicing.stripe import invoices as stripe_invoices
from invoicing.stripe.client import StripeSyncError, dashboard_url


def _link(kind: str, stripe_id: str | None) -> str:
    if not stripe_id:
        return "-"
    return format_html(
        '<a href="{}" target="_blank" rel="noopener">{}</a>',
        dashboard_url(kind, stripe_id),
        stripe_id,
    )


def _can_change_invoices(request: HttpRequest) -> bool:
    opts = Invoice._meta
    return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")


# --- For InvoiceAdmin -------------------------------------------------------------------------


@admin.display(description="Stripe invoice")
def stripe_invoice_link(invoice: Invoice) -> str:
    return _link("invoices", invoice.stripe_invoice_id)


@admin.display(description="Stripe item")
def stripe_item_link(line: InvoiceLine) -> str:
    # Invoice items have no dashboard page of their own: link to their invoice.
    if not line.stripe_invoice_item_id:
        return "-"
    return format_html(
        '<a href="{}" target="_blank" rel="noopener">{}</a>',
        dashboard_url("invoices", line.invoice.stripe_invoice_id or ""),
        line.stripe_invoice_item_id,
    )


@admin.display(description="Stripe delivery")
def stripe_delivery_status(invoice: Invoice) -> str:
    sync = StripeInvoiceSync.objects.filter(invoice=invoice).first()
    if sync is None:
        return "-"
    detail = f" ({sync.stripe_status} in Stripe)" if sync.stripe_status else ""
    notes = []
    if sync.payment_failure:
        notes.append(f"payment failed: {sync.payment_failure}")
    if payment_methods.carried(sync):
        notes.append(
            f"not charged: carried to the customer's Stripe balance ({sync.ending_balance})"
        )
    return "; ".join([f"{sync.get_status_display()}{detail}", *notes])


@admin.action(description="Deliver to Stripe again (failed or flagged)")
def retry_stripe_delivery(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Invoice]
) -> None:
    """For InvoiceAdmin (and the sync admin below): resume each delivery; what earlier runs
    created in Stripe is found, not created again."""
    if not _can_change_invoices(request):
        modeladmin.message_user(request, "You may not change invoices.", level=messages.ERROR)
        return
    queued = []
    for invoice in queryset.order_by("pk"):
        try:
            stripe_invoices.retry_invoice_sync(
                invoice_id=invoice.pk, user=request.user, now=timezone.now()
            )
        except invoices.TransitionNotAllowed as exc:
            modeladmin.message_user(request, str(exc), level=messages.ERROR)
            continue
        queued.append(str(invoice))
    if queued:
        modeladmin.message_user(
            request, f"Queued for Stripe: {', '.join(queued)}", level=messages.SUCCESS
        )


# --- The Stripe models ------------------------------------------------------------------------


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class StripeCustomerForm(forms.ModelForm):
    class Meta:
        model = StripeCustomer
        fields = ["customer", "stripe_customer_id"]

    def clean_stripe_customer_id(self) -> str:
        value = (self.cleaned_data.get("stripe_customer_id") or "").strip()
        if not value.startswith("cus_"):
            raise forms.ValidationError("A Stripe customer id starts with cus_.")
        return value


@admin.register(StripeCustomer)
class StripeCustomerAdmin(admin.ModelAdmin):
    """Which Stripe customer each customer is billed as; finance staff may link an existing
    one (before the first delivery creates one)."""

    form = StripeCustomerForm
    list_display = [
        "customer",
        "stripe_customer",
        "source",
        "payment_method",
        "awaiting_payment_method",
        "updated_at",
    ]
    list_filter = ["source"]
    list_select_related = ["customer"]
    search_fields = ["customer__external_id", "customer__name", "stripe_customer_id"]
    readonly_fields = [
        "stripe_customer",
        "source",
        "default_payment_method",
        "payment_method_at",
        "requested_at",
        "created_at",
        "updated_at",
    ]
    actions = ["card_link"]

    @admin.display(description="Payment method")
    def payment_method(self, obj: StripeCustomer) -> str:
        return obj.default_payment_method or "none: invoices cannot be charged"

    @admin.display(description="Awaiting a payment method")
    def awaiting_payment_method(self, obj: StripeCustomer) -> int:
        return StripeInvoiceSync.objects.filter(
            invoice__customer_id=obj.customer_id, status=payment_methods.AWAITING
        ).count()

    @admin.action(description="Create a link where the customer adds a card (Stripe Checkout)")
    def card_link(self, request: HttpRequest, queryset: QuerySet[StripeCustomer]) -> None:
        page = request.build_absolute_uri(reverse("portal:billing"))
        for link in queryset.select_related("customer").order_by("pk"):
            try:
                url = payment_methods.start_setup(
                    customer_id=link.customer_id,
                    success_url=f"{page}?setup=done",
                    cancel_url=page,
                    now=timezone.now(),
                )
            except StripeSyncError as exc:
                self.message_user(
                    request, f"{link.customer.external_id}: {exc}", level=messages.ERROR
                )
                continue
            self.message_user(
                request,
                format_html(
                    "{}: send the customer this link (valid 24 hours): "
                    '<a href="{}" rel="noopener" target="_blank">{}</a>',
                    link.customer.external_id,
                    url,
                    url,
                ),
                level=messages.SUCCESS,
            )

    @admin.display(description="Stripe customer", ordering="stripe_customer_id")
    def stripe_customer(self, obj: StripeCustomer) -> str:
        return _link("customers", obj.stripe_customer_id)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(
        self, request: HttpRequest, obj: StripeCustomer, form: Any, change: bool
    ) -> None:
        # Through the service: one link per customer, audited with the user.
        linked = customers.link_stripe_customer(
            customer_id=obj.customer_id,
            stripe_customer_id=obj.stripe_customer_id or "",
            user=request.user,
        )
        obj.pk = linked.pk


@admin.register(StripeMeterMapping)
class StripeMeterMappingAdmin(admin.ModelAdmin):
    """Which Stripe Billing Meter (event name) receives each meter's usage."""

    list_display = ["meter", "event_name", "reporting_from", "is_active", "updated_at"]
    list_filter = ["is_active"]
    fields = ["meter", "event_name", "reporting_from", "is_active"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(StripeInvoiceSync)
class StripeInvoiceSyncAdmin(_ReadOnly):
    """Deliveries of finalized invoices to Stripe; failed and flagged ones can be retried."""

    list_display = [
        "invoice",
        "status",
        "stripe_invoice",
        "stripe_status",
        "attempts",
        "first_attempt_at",
        "delivered_at",
        "amount_due",
        "amount_paid",
        "ending_balance",
        "payment_failure",
        "last_error",
    ]
    list_filter = ["status", "stripe_status"]
    list_select_related = ["invoice"]
    search_fields = ["invoice__number", "invoice__stripe_invoice_id"]
    actions = ["retry"]

    @admin.display(description="Stripe invoice")
    def stripe_invoice(self, sync: StripeInvoiceSync) -> str:
        return stripe_invoice_link(sync.invoice)

    @admin.action(description="Deliver to Stripe again (failed or flagged)")
    def retry(self, request: HttpRequest, queryset: QuerySet[StripeInvoiceSync]) -> None:
        invoices_qs = Invoice.objects.filter(pk__in=queryset.values("invoice_id"))
        retry_stripe_delivery(self, request, invoices_qs)


@admin.register(UsageReport)
class UsageReportAdmin(_ReadOnly):
    """The usage reporting outbox: one row per meter event, written before it is sent."""

    list_display = [
        "pk",
        "customer",
        "event_name",
        "kind",
        "value",
        "quantity",
        "window_start",
        "window_end",
        "status",
        "attempts",
        "sent_at",
        "last_error",
    ]
    list_filter = ["status", "kind", "event_name"]
    list_select_related = ["customer"]
    search_fields = ["customer__external_id", "event_name"]
    actions = ["retry", "mark_delivered"]

    def _each(self, request: HttpRequest, queryset: QuerySet[UsageReport], call: Any) -> None:
        if not _can_change_invoices(request):
            self.message_user(request, "You may not change billing records.", level=messages.ERROR)
            return
        done = []
        for report_id in queryset.exclude(status=UsageReport.Status.SENT).values_list(
            "pk", flat=True
        ):
            call(report_id=report_id, user=request.user, now=timezone.now())
            done.append(str(report_id))
        self.message_user(request, f"Done for reports: {', '.join(done) or 'none'}")

    @admin.action(description="Send again under the same identifier")
    def retry(self, request: HttpRequest, queryset: QuerySet[UsageReport]) -> None:
        self._each(request, queryset, usage_reports.retry_usage_report)

    @admin.action(description="Mark delivered (checked in Stripe)")
    def mark_delivered(self, request: HttpRequest, queryset: QuerySet[UsageReport]) -> None:
        self._each(request, queryset, usage_reports.mark_usage_report_delivered)


@admin.register(StripeWebhookEvent)
class StripeWebhookEventAdmin(_ReadOnly):
    list_display = ["event_id", "type", "created", "invoice", "outcome", "detail", "received_at"]
    list_filter = ["type", "outcome"]
    search_fields = ["event_id", "stripe_object_id", "invoice__number"]
