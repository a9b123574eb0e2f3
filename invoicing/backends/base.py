"""The interface every billing backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

from invoicing.models import Invoice


class BillingBackend(ABC):
    name: str

    @abstractmethod
    def deliver_invoice(self, invoice: Invoice) -> None:
        """Hand a finalized invoice over for charging, and a later status (paid, void or
        uncollectible here) to where it went; idempotent, called outside transactions."""

    def reconcile(self) -> list[str]:
        """Differences between our invoices/usage and what the backend holds ([] if none)."""
        return []
