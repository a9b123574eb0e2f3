"""The local backend: invoices live here; the customer gets the document by e-mail/portal."""

from __future__ import annotations

from invoicing.backends.base import BillingBackend, Delivery
from invoicing.models import Invoice


class LocalBackend(BillingBackend):
    name = "local"

    def deliver_invoice(self, invoice: Invoice) -> None:
        # Our own records are the books: nothing to send elsewhere. The invoice e-mail is sent
        # by notifications when it sees the finalized invoice.
        return None

    def describe_delivery(self, invoice: Invoice) -> Delivery:
        return Delivery(
            delivered=True, detail="kept here (the local backend: our records are the books)"
        )
