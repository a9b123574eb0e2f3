"""Stripe's webhook events: verified, stored once by event id (a replay changes nothing), and
applied by the handler its type names in HANDLERS; other types are stored and acknowledged.

A handler gets the stored row and the event's object, runs in the transaction that stores the
row, and sets the row's `outcome` (and `detail`, `invoice`) to say what it did.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import record_audit
from invoicing.models import Invoice, StripeWebhookEvent
from invoicing.services import invoices as our_invoices
from invoicing.stripe import client
from invoicing.stripe.invoices import STRIPE_TO_OURS, record_stripe_status

S = Invoice.Status
VOID_REASON = "voided in Stripe"

Handler = Callable[[StripeWebhookEvent, dict[str, Any]], None]


def receive_webhook(
    *, payload: bytes, signature: str | None, now: datetime | None = None
) -> tuple[StripeWebhookEvent, bool]:
    """Verify a webhook and apply its event once; (event row, True if seen for the first
    time). Raises client.InvalidWebhook for a bad or stale signature."""
    event = client.verify_webhook(payload=payload, signature=signature)
    return apply_stripe_event(event=event, now=now or timezone.now())


@transaction.atomic
def apply_stripe_event(*, event: dict[str, Any], now: datetime) -> tuple[StripeWebhookEvent, bool]:
    """Store the event by its id (a replay changes nothing) and apply it, in one transaction."""
    obj = (event.get("data") or {}).get("object") or {}
    try:
        with transaction.atomic():
            row = StripeWebhookEvent.objects.create(
                event_id=event["id"],
                type=event.get("type", ""),
                created=client.from_epoch(event.get("created") or client.epoch(now)),
                livemode=bool(event.get("livemode")),
                stripe_object_id=str(obj.get("id") or ""),
                outcome=StripeWebhookEvent.Outcome.IGNORED,
                payload=event,
            )
    except IntegrityError:
        return StripeWebhookEvent.objects.get(event_id=event["id"]), False
    handler = HANDLERS.get(row.type)
    if handler is None:
        row.detail = "event type not handled"
    else:
        handler(row, obj)
    row.save(update_fields=["outcome", "detail", "invoice"])
    return row, True


# --- Invoice events ---------------------------------------------------------------------------


def _our_invoice(obj: dict[str, Any]) -> Invoice | None:
    our_id = (obj.get("metadata") or {}).get("invoice_id")
    query = (
        Invoice.objects.filter(pk=int(our_id))
        if our_id and str(our_id).isdigit()
        else Invoice.objects.filter(stripe_invoice_id=obj.get("id"))
    )
    return query.select_for_update().select_related("customer").first()


def apply_invoice_event(row: StripeWebhookEvent, obj: dict[str, Any]) -> None:
    """Move our invoice forward to what the Stripe invoice's status stands for.

    The event's own snapshot of the invoice decides, not the event type, and only a transition
    that invoices.ALLOWED permits from our current status is made: Stripe's statuses only move
    forward, so an event delivered late (invoice.finalized after invoice.paid) finds ours
    already further and changes nothing.
    """
    if obj.get("object") != "invoice":
        row.detail = "event type not handled"
        return
    invoice = _our_invoice(obj)
    if invoice is None:
        row.detail = "not one of our invoices"
        return
    row.invoice = invoice
    if invoice.stripe_invoice_id and invoice.stripe_invoice_id != obj.get("id"):
        row.detail = f"ours is {invoice.stripe_invoice_id} in Stripe, not {obj.get('id')}"
        return
    stripe_status = str(obj.get("status") or "")
    record_stripe_status(invoice_id=invoice.pk, stripe_status=stripe_status, at=row.created)
    before = invoice.status
    target = STRIPE_TO_OURS.get(stripe_status)
    if invoice.status == S.DRAFT:
        row.detail = "ours is still a draft: only we finalize"
    elif target is None or target == invoice.status:
        row.outcome = StripeWebhookEvent.Outcome.UNCHANGED
    elif target in our_invoices.ALLOWED[invoice.status]:
        if target == S.PAID:
            our_invoices.mark_invoice_paid(invoice_id=invoice.pk, now=row.created)
        elif target == S.VOID:
            our_invoices.void_invoice(invoice_id=invoice.pk, reason=VOID_REASON, now=row.created)
        elif target == S.UNCOLLECTIBLE:
            our_invoices.mark_invoice_uncollectible(invoice_id=invoice.pk, now=row.created)
        row.outcome = StripeWebhookEvent.Outcome.APPLIED
    else:
        row.outcome = StripeWebhookEvent.Outcome.STALE
        row.detail = (
            f"Stripe said {stripe_status} at {row.created:%Y-%m-%d %H:%M:%S}; ours is "
            f"{invoice.status} already"
        )
    record_audit(
        action="invoice.stripe_event",
        obj=invoice,
        customer_external_id=invoice.customer.external_id,
        data={
            "event_id": row.event_id,
            "type": row.type,
            "stripe_invoice_id": obj.get("id"),
            "stripe_status": stripe_status,
            "from": before,
            "to": Invoice.objects.values_list("status", flat=True).get(pk=invoice.pk),
            "outcome": row.outcome,
            "attempt_count": obj.get("attempt_count"),
        },
    )


# Event type -> what it does here. Every invoice event carries the invoice's snapshot, and the
# snapshot's status decides (apply_invoice_event), so they share one handler.
HANDLERS: dict[str, Handler] = {
    "invoice.finalized": apply_invoice_event,
    "invoice.paid": apply_invoice_event,
    "invoice.payment_failed": apply_invoice_event,
    "invoice.voided": apply_invoice_event,
    "invoice.marked_uncollectible": apply_invoice_event,
}
