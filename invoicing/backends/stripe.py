"""The Stripe backend: finalized invoices are created, finalized and charged (or sent) in
Stripe, by invoicing.stripe.invoices; reconcile compares with Stripe (invoicing.stripe.reconcile).
"""

from __future__ import annotations

from invoicing.backends.base import BillingBackend
from invoicing.models import Invoice
from invoicing.stripe import invoices, reconcile


class StripeBackend(BillingBackend):
    """Invoices are created, finalized and charged (or sent) in Stripe."""

    name = "stripe"

    def deliver_invoice(self, invoice: Invoice) -> None:
        invoices.deliver_invoice(invoice_id=invoice.pk)

    def reconcile(self) -> list[str]:
        return reconcile.reconcile_with_stripe()
