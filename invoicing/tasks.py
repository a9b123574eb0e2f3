"""Celery tasks of invoicing: thin wrappers that select what is due and call services."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from invoicing.backends import get_backend
from invoicing.models import Invoice
from invoicing.services import closing, invoices


@shared_task(name="invoicing.close_due_periods", ignore_result=True)
def close_due_periods() -> dict[str, int]:
    """Every minute (beat): open new periods, close due ones, finalize reviewed drafts.

    It selects what is due at each run, so a missed run is caught up by the next one, and
    every step is idempotent, so a redelivered task changes nothing.
    """
    now = timezone.now()
    report = closing.close_due_periods(now=now)
    finalized = invoices.finalize_due_invoices(now=now)
    return {"closed": len(report.closed), "failed": len(report.failed), "finalized": len(finalized)}


@shared_task(
    name="invoicing.deliver_invoice",
    ignore_result=True,
    autoretry_for=(ConnectionError, TimeoutError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=None,
)
def deliver_invoice(invoice_id: int) -> None:
    """Hand a finalized invoice to the billing backend (idempotent; queued after commit)."""
    invoice = Invoice.objects.get(pk=invoice_id)
    if invoice.status == Invoice.Status.DRAFT:
        return
    get_backend().deliver_invoice(invoice)
