"""Invoice transitions: draft -> finalized -> paid | void | uncollectible, with gapless numbers.

Only a draft changes its lines; each transition is checked against ALLOWED, made under a row
lock, and written to the audit log with who made it. A draft is finalized only once the
customer has had its usage summary (DESIGN section 5, step 2), whoever asks.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import TypeVar

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest

from audit.services import record_audit
from billing_project.errors import DomainError
from invoicing import hooks, tasks
from invoicing.backends import get_backend
from invoicing.backends.base import Delivery
from invoicing.models import (
    CreditNoteNumberSequence,
    Invoice,
    InvoiceNumberSequence,
    StripeInvoiceSync,
)

SequenceModel = TypeVar("SequenceModel", InvoiceNumberSequence, CreditNoteNumberSequence)

logger = logging.getLogger(__name__)

S = Invoice.Status
ALLOWED: dict[str, set[str]] = {
    S.DRAFT: {S.FINALIZED},
    S.FINALIZED: {S.PAID, S.VOID, S.UNCOLLECTIBLE},
    S.UNCOLLECTIBLE: {S.PAID, S.VOID},
    S.PAID: set(),
    S.VOID: set(),
}


class TransitionNotAllowed(DomainError):
    """The invoice is not in a state that allows the requested change (409)."""

    status = HTTPStatus.CONFLICT
    code = "transition_not_allowed"


class SummaryNotSent(TransitionNotAllowed):
    """The draft's usage summary has not gone out: nobody is charged before they were told
    what for (finance may skip the review period, never the summary)."""


def next_in_sequence(sequence_model: type[SequenceModel], year: int, prefix: str) -> str:
    """Take the next number of the year under the sequence row's lock: gapless, because the
    increment commits or rolls back with the document that uses it (invoices: INV-, credit
    notes: CN-, each with its own sequence table)."""
    try:
        with transaction.atomic():
            sequence_model.objects.get_or_create(year=year)
    except IntegrityError:
        pass  # created concurrently; the lock below serializes us behind it
    sequence = sequence_model.objects.select_for_update().get(year=year)
    sequence.last_number = F("last_number") + 1
    sequence.save(update_fields=["last_number"])
    sequence.refresh_from_db(fields=["last_number"])
    return f"{prefix}-{year}-{sequence.last_number:06d}"


def _next_number(year: int) -> str:
    return next_in_sequence(InvoiceNumberSequence, year, "INV")


def _transition(
    *, invoice_id: int, to: str, now: datetime, user: object, data: dict | None = None
) -> Invoice:
    invoice = Invoice.objects.select_for_update().select_related("customer").get(pk=invoice_id)
    if invoice.status == to:
        return invoice  # idempotent: a retry of the same transition changes nothing
    if to not in ALLOWED[invoice.status]:
        raise TransitionNotAllowed(f"invoice {invoice} is {invoice.status}; cannot become {to}")
    if to == S.FINALIZED and invoice.summary_sent_at is None:
        raise SummaryNotSent(
            f"{invoice}: the customer has not had the usage summary yet (it goes out when the "
            "draft is created; see Notifications); finalize it once it was sent"
        )
    before = invoice.status
    invoice.status = to
    fields = ["status", "updated_at"]
    if to == S.FINALIZED:
        invoice.number = _next_number(now.year)
        invoice.finalized_at = now
        invoice.due_at = now + timedelta(days=settings.BILLING_PAYMENT_TERMS_DAYS)
        fields += ["number", "finalized_at", "due_at"]
    elif to == S.PAID:
        invoice.paid_at = now
        fields.append("paid_at")
    elif to == S.VOID:
        invoice.voided_at = now
        invoice.void_reason = (data or {}).get("reason", "")
        fields += ["voided_at", "void_reason"]
    invoice.save(update_fields=fields)
    if to == S.FINALIZED:
        hooks.invoice_finalized(invoice)  # the invoice e-mail's outbox row, in this transaction
    # After commit the billing backend is brought in line: a finalized invoice is charged or
    # sent, a later status (paid or void here, say) is pushed to where it was sent.
    tasks.deliver_invoice.delay_on_commit(invoice.pk)
    record_audit(
        action=f"invoice.{to}",
        obj=invoice,
        user=user,
        customer_external_id=invoice.customer.external_id,
        data={
            "from": before,
            "to": to,
            "number": invoice.number,
            "period_id": invoice.period_id,
            "total_minor": invoice.total_minor,
            **(data or {}),
        },
    )
    return invoice


@transaction.atomic
def finalize_invoice(*, invoice_id: int, now: datetime, user: object = None) -> Invoice:
    """Number a draft and make it final; the billing backend charges it after commit.

    Raises SummaryNotSent for a draft whose usage summary has not gone out."""
    return _transition(invoice_id=invoice_id, to=S.FINALIZED, now=now, user=user)


@transaction.atomic
def void_invoice(*, invoice_id: int, reason: str, now: datetime, user: object = None) -> Invoice:
    if not reason.strip():
        raise TransitionNotAllowed("a reason is required to void an invoice")
    if StripeInvoiceSync.objects.filter(invoice_id=invoice_id, stripe_status="paid").exists():
        raise TransitionNotAllowed(
            "the customer paid it in Stripe: refund it there (or issue a credit note); "
            "it cannot be voided"
        )
    return _transition(
        invoice_id=invoice_id, to=S.VOID, now=now, user=user, data={"reason": reason.strip()}
    )


@transaction.atomic
def mark_invoice_paid(*, invoice_id: int, now: datetime, user: object = None) -> Invoice:
    return _transition(invoice_id=invoice_id, to=S.PAID, now=now, user=user)


@transaction.atomic
def mark_invoice_uncollectible(*, invoice_id: int, now: datetime, user: object = None) -> Invoice:
    return _transition(invoice_id=invoice_id, to=S.UNCOLLECTIBLE, now=now, user=user)


@transaction.atomic
def mark_summary_sent(*, invoice_id: int, at: datetime) -> None:
    """Record that the customer got the itemized summary: finalization may now proceed."""
    # The customer's review time runs from the summary, however late the mail went out.
    review_ends = at + timedelta(seconds=settings.BILLING_REVIEW_PERIOD)
    updated = Invoice.objects.filter(pk=invoice_id, summary_sent_at__isnull=True).update(
        summary_sent_at=at,
        finalize_after=Greatest(F("finalize_after"), Value(review_ends)),
    )
    if updated:
        invoice = Invoice.objects.select_related("customer").get(pk=invoice_id)
        record_audit(
            action="invoice.summary_sent",
            obj=invoice,
            customer_external_id=invoice.customer.external_id,
            data={"period_id": invoice.period_id, "total_minor": invoice.total_minor},
        )


@dataclass
class FinalizeReport:
    finalized: list[int] = field(default_factory=list)  # invoice ids, in id order
    failed: dict[int, str] = field(default_factory=dict)  # invoice id -> error


def finalize_due_invoices(
    *, now: datetime, invoice_ids: Collection[int] | None = None
) -> FinalizeReport:
    """Finalize every draft (of `invoice_ids`, if given) whose summary was sent and whose
    review period has passed; one failure stops no other."""
    report = FinalizeReport()
    due = Invoice.objects.filter(
        status=S.DRAFT, finalize_after__lte=now, summary_sent_at__isnull=False
    ).order_by("pk")
    if invoice_ids is not None:
        due = due.filter(pk__in=invoice_ids)
    for invoice_id in list(due.values_list("pk", flat=True)):
        try:
            finalize_invoice(invoice_id=invoice_id, now=now)
        except Exception as exc:
            logger.exception("finalizing invoice %s failed", invoice_id)
            report.failed[invoice_id] = f"{type(exc).__name__}: {exc}"
            continue
        report.finalized.append(invoice_id)
    return report


def deliver_to_backend(*, invoice_id: int) -> Delivery | None:
    """Hand an invoice to the billing backend now, in this process (outside any transaction):
    deliver a finalized one, push a later status (paid, void, uncollectible here) to where it
    was delivered; None for a draft. Idempotent: the deliver_invoice task, queued after every
    transition, runs this too. Errors the backend calls transient (ConnectionError) propagate
    for a retry; permanent ones are recorded by the backend and described in the answer."""
    invoice = Invoice.objects.get(pk=invoice_id)
    if invoice.status == S.DRAFT:
        return None
    backend = get_backend()
    backend.deliver_invoice(invoice)
    return backend.describe_delivery(invoice)
