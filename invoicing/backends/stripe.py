"""The Stripe backend: finalized invoices are created, finalized and charged (or sent) in
Stripe, by invoicing.stripe.invoices; reconcile compares with Stripe (invoicing.stripe.reconcile).
"""

from __future__ import annotations

from invoicing.backends.base import BillingBackend, Delivery
from invoicing.models import Invoice, StripeInvoiceSync
from invoicing.stripe import credit_notes, invoices, reconcile


class StripeBackend(BillingBackend):
    """Invoices are created, finalized and charged (or sent) in Stripe."""

    name = "stripe"

    def deliver_invoice(self, invoice: Invoice) -> None:
        invoices.deliver_invoice(invoice_id=invoice.pk)

    def describe_delivery(self, invoice: Invoice) -> Delivery:
        sync = StripeInvoiceSync.objects.select_related("invoice").filter(invoice=invoice).first()
        if sync is None:
            return Delivery(delivered=False, detail="not sent to Stripe yet")
        if sync.status == StripeInvoiceSync.Status.AWAITING_PAYMENT_METHOD:
            # Delivered (open in Stripe); charged when the customer adds a card: not a failure.
            return Delivery(
                delivered=True,
                detail=f"delivered to Stripe as {sync.invoice.stripe_invoice_id}, "
                f"{sync.last_error}",
            )
        if sync.status == StripeInvoiceSync.Status.DELIVERED:
            note = f"; payment failed: {sync.payment_failure}" if sync.payment_failure else ""
            return Delivery(
                delivered=True,
                detail=f"delivered to Stripe as {sync.invoice.stripe_invoice_id} "
                f"({sync.stripe_status}){note}",
            )
        if sync.status == StripeInvoiceSync.Status.PENDING:
            reason = f": {sync.last_error}" if sync.last_error else ""
            return Delivery(
                delivered=False,
                detail=f"delivery to Stripe pending after {sync.attempts} attempt(s){reason}",
            )
        return Delivery(
            delivered=False,
            detail=f"delivery to Stripe {sync.get_status_display().lower()}: {sync.last_error}",
        )

    def reconcile(self) -> list[str]:
        return reconcile.reconcile_with_stripe() + credit_notes.reconcile_with_stripe()
