"""Extension points for the apps above invoicing: the cap that limits what a closed period
may bill, and what happens when an invoice is finalized.

Finalized invoices: notifications registers the invoice e-mail (with its PDF) here, so its
outbox row is written in the finalizing transaction and commits or rolls back with it.

Caps:

budgets rates a period's spend with invoicing's selectors, so it sits above invoicing and
invoicing must not import it; yet the close writes a cap-credit line for usage beyond an
unacknowledged cap. budgets registers its selector here when Django starts
(BudgetsConfig.ready). A close with nothing registered refuses to run rather than bill past
a cap silently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured

from invoicing.models import BillingPeriod, Invoice


@dataclass(frozen=True)
class PeriodCap:
    """What limits a period's bill, in minor units: its budget cap, and the usage acknowledged
    under an earlier cap of the period, billed whatever this cap (0: none)."""

    cap_minor: int
    acknowledged_minor: int = 0

    @property
    def limit_minor(self) -> int:
        """The most the period bills over all its invoices."""
        return max(self.cap_minor, self.acknowledged_minor)


PeriodCaps = Callable[[Sequence[BillingPeriod]], dict[int, PeriodCap | None]]
_period_caps: PeriodCaps | None = None


def register_period_caps(function: PeriodCaps) -> None:
    global _period_caps
    _period_caps = function


def period_caps(periods: Sequence[BillingPeriod]) -> dict[int, PeriodCap | None]:
    """Period pk -> what limits its bill, or None (no cap, or the cap acknowledged)."""
    if not periods:
        return {}
    if _period_caps is None:
        raise ImproperlyConfigured("no budget cap provider: is the budgets app installed?")
    return _period_caps(periods)


InvoiceFinalized = Callable[[Invoice], object]
_on_invoice_finalized: list[InvoiceFinalized] = []


def register_invoice_finalized(function: InvoiceFinalized) -> None:
    if function not in _on_invoice_finalized:
        _on_invoice_finalized.append(function)


def invoice_finalized(invoice: Invoice) -> None:
    """Called inside the transaction that finalizes `invoice` (invoices._transition)."""
    for function in _on_invoice_finalized:
        function(invoice)
