"""The interface every billing backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from invoicing.models import Invoice


@dataclass(frozen=True)
class Delivery:
    """Where an invoice stands with its backend, in words for the billing cycle's report."""

    delivered: bool
    detail: str  # e.g. "delivered to Stripe as in_123 (open)", "delivery to Stripe failed: ..."


class BillingBackend(ABC):
    name: str

    @abstractmethod
    def deliver_invoice(self, invoice: Invoice) -> None:
        """Hand a finalized invoice over for charging, and a later status (paid, void or
        uncollectible here) to where it went; idempotent, called outside transactions."""

    @abstractmethod
    def describe_delivery(self, invoice: Invoice) -> Delivery:
        """Whether the backend holds the invoice as it stands here, and if not, why."""

    def reconcile(self) -> list[str]:
        """Differences between our invoices/usage and what the backend holds ([] if none)."""
        return []
