"""Stripe's webhook events: verified, checked, stored once by event id (a replay changes
nothing), and applied by the handler its type names in HANDLERS; other types are stored and
acknowledged.

Nothing a signed body says can cause a 500 (Stripe retries those and disables endpoints that
keep failing). The envelope is checked first (`parse_event`): a body that is not JSON, not an
object, or whose id, type, created, livemode or data.object Stripe would never send, is not
understood: InvalidWebhook (400), nothing stored. An understood envelope is stored, with
the characters PostgreSQL cannot store (NUL, unpaired surrogates) replaced by U+FFFD in the
stored copy, and answered 200 whatever its object holds: a handler that does not understand
the object records why (`detail`) and changes nothing else.

A handler gets the stored row and the event's object (storable strings only), runs in the
transaction that stores the row, and sets the row's `outcome` (and `detail`, `invoice`).

Stripe's v2 "thin" events (`"object": "v2.core.event"`: an RFC 3339 `created`, no `data`, a
`related_object` naming what it is about), such as `v1.billing.meter.error_report_triggered`,
arrive at the same endpoint: stored and acknowledged the same way; meter error reports are
kept with the meter they name, for finance staff (admin: Stripe webhook events).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import record_audit
from invoicing.models import Invoice, StripeWebhookEvent
from invoicing.services import invoices as our_invoices
from invoicing.stripe import client, payment_methods
from invoicing.stripe.invoices import (
    STRIPE_STATUS_RANK,
    STRIPE_TO_OURS,
    carried_to_balance,
    record_stripe_status,
)

S = Invoice.Status
VOID_REASON = "voided in Stripe"

Handler = Callable[[StripeWebhookEvent, dict[str, Any]], None]

# The columns the envelope is stored in (characters).
EVENT_ID_MAX = StripeWebhookEvent._meta.get_field("event_id").max_length or 0
TYPE_MAX = StripeWebhookEvent._meta.get_field("type").max_length or 0
OBJECT_ID_MAX = StripeWebhookEvent._meta.get_field("stripe_object_id").max_length or 0
# Stripe's objects nest a few levels; anything deeper is not an event of theirs.
MAX_DEPTH = 32
# Our primary keys are 64-bit.
MAX_PK = 2**63 - 1
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACED = "NUL or unpaired surrogate characters replaced by U+FFFD in the stored payload"


@dataclass(frozen=True)
class Envelope:
    """What is read of a Stripe event, checked; `payload` is the event as stored."""

    event_id: str
    type: str
    created: datetime
    livemode: bool
    obj: dict[str, Any]
    payload: dict[str, Any]
    replaced: bool


def receive_webhook(
    *, payload: bytes, signature: str | None, now: datetime | None = None
) -> tuple[StripeWebhookEvent, bool]:
    """Verify a webhook and apply its event once; (event row, True if seen for the first
    time). Raises client.InvalidWebhook for a bad or stale signature, or a body that is not
    an event we understand."""
    client.verify_webhook(payload=payload, signature=signature)
    return apply_stripe_event(event=decode_body(payload), now=now or timezone.now())


def decode_body(payload: bytes) -> Any:
    """The JSON of a (verified, so UTF-8) body: no NaN or infinities, finite numbers only."""
    try:
        return json.loads(
            payload.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float
        )
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError too
        raise client.InvalidWebhook(f"the body is not JSON: {type(exc).__name__}") from None


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number out of range")
    return value


def parse_event(event: Any, *, now: datetime) -> Envelope:
    """Check the envelope of a Stripe event (InvalidWebhook saying what is wrong) and make
    the copy that is stored and handed to the handler."""
    if not isinstance(event, dict):
        raise client.InvalidWebhook("the event is not a JSON object")
    if event.get("object") == THIN_OBJECT:
        return _parse_thin_event(event, now=now)
    if event.get("object", "event") != "event":
        raise client.InvalidWebhook('the event\'s "object" is neither "event" nor "v2.core.event"')
    event_id = _text(event.get("id"), name="id", limit=EVENT_ID_MAX)
    type_ = _text(event.get("type"), name="type", limit=TYPE_MAX)
    created = event.get("created")
    if isinstance(created, bool) or not isinstance(created, int):
        raise client.InvalidWebhook("created is not a whole number of seconds")
    # Stripe creates an event before it signs a delivery, which is at most the tolerance old.
    if not 0 <= created <= client.epoch(now) + settings.STRIPE_WEBHOOK_TOLERANCE:
        raise client.InvalidWebhook("created is not a time at which Stripe can have sent it")
    livemode = event.get("livemode", False)
    if not isinstance(livemode, bool):
        raise client.InvalidWebhook("livemode is not true or false")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise client.InvalidWebhook("data.object is not a JSON object")
    payload = _storable(event, depth=0)
    return Envelope(
        event_id=event_id,
        type=type_,
        created=client.from_epoch(created),
        livemode=livemode,
        obj=payload["data"]["object"],
        payload=payload,
        replaced=payload != event,
    )


THIN_OBJECT = "v2.core.event"


def _parse_thin_event(event: dict[str, Any], *, now: datetime) -> Envelope:
    """A v2 thin event: its `related_object` stands in for data.object (stored as it came)."""
    event_id = _text(event.get("id"), name="id", limit=EVENT_ID_MAX)
    type_ = _text(event.get("type"), name="type", limit=TYPE_MAX)
    created_text = event.get("created")
    if not isinstance(created_text, str):
        raise client.InvalidWebhook("created is not an RFC 3339 time")
    try:
        created = datetime.fromisoformat(created_text.replace("Z", "+00:00"))
    except ValueError:
        raise client.InvalidWebhook("created is not an RFC 3339 time") from None
    if created.tzinfo is None:
        raise client.InvalidWebhook("created has no offset")
    if created > now + timedelta(seconds=settings.STRIPE_WEBHOOK_TOLERANCE):
        raise client.InvalidWebhook("created is not a time at which Stripe can have sent it")
    livemode = event.get("livemode", False)
    if not isinstance(livemode, bool):
        raise client.InvalidWebhook("livemode is not true or false")
    related = event.get("related_object")
    if related is not None and not isinstance(related, dict):
        raise client.InvalidWebhook("related_object is not a JSON object")
    payload = _storable(event, depth=0)
    return Envelope(
        event_id=event_id,
        type=type_,
        created=created.astimezone(UTC),
        livemode=livemode,
        obj=payload.get("related_object") or {},
        payload=payload,
        replaced=payload != event,
    )


def _text(value: Any, *, name: str, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise client.InvalidWebhook(f"{name} is not a non-empty string")
    if len(value) > limit:
        raise client.InvalidWebhook(f"{name} is longer than {limit} characters")
    if UNSTORABLE.search(value):
        raise client.InvalidWebhook(f"{name} holds a NUL or an unpaired surrogate")
    return value


def _storable(value: Any, *, depth: int) -> Any:
    """`value` with every string (keys too) storable in PostgreSQL text and jsonb."""
    if depth > MAX_DEPTH:
        raise client.InvalidWebhook(f"the event nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        return UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {
            UNSTORABLE.sub("\ufffd", key): _storable(item, depth=depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_storable(item, depth=depth + 1) for item in value]
    return value


def stripe_id(value: Any, *, limit: int = OBJECT_ID_MAX) -> str | None:
    """`value` if it can be a Stripe object's id (a non-empty string that fits our columns)."""
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


@transaction.atomic
def apply_stripe_event(*, event: Any, now: datetime) -> tuple[StripeWebhookEvent, bool]:
    """Store the event by its id (a replay changes nothing) and apply it, in one transaction.
    Raises client.InvalidWebhook, storing nothing, for an envelope not understood."""
    envelope = parse_event(event, now=now)
    try:
        with transaction.atomic():
            row = StripeWebhookEvent.objects.create(
                event_id=envelope.event_id,
                type=envelope.type,
                created=envelope.created,
                livemode=envelope.livemode,
                stripe_object_id=stripe_id(envelope.obj.get("id")) or "",
                outcome=StripeWebhookEvent.Outcome.IGNORED,
                payload=envelope.payload,
            )
    except IntegrityError:
        return StripeWebhookEvent.objects.get(event_id=envelope.event_id), False
    handler = HANDLERS.get(row.type)
    if handler is None:
        row.detail = "event type not handled"
    else:
        handler(row, envelope.obj)
    if envelope.replaced:
        row.detail = f"{row.detail}; {REPLACED}" if row.detail else REPLACED
    row.save(update_fields=["outcome", "detail", "invoice"])
    return row, True


# --- Invoice events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InvoiceSnapshot:
    """What an invoice event is applied by: its snapshot of the Stripe invoice, checked.

    `our_id` is metadata.invoice_id as our primary key (0 when it cannot be one), or None
    when the metadata names none, and then the Stripe id finds ours.
    """

    stripe_invoice_id: str
    status: str
    our_id: int | None
    attempt_count: int | None


class NotUnderstood(Exception):
    """An event's object is not what its type promises: stored, acknowledged, not applied."""


def invoice_snapshot(obj: dict[str, Any]) -> InvoiceSnapshot:
    """The checked snapshot of an invoice event's object (NotUnderstood saying why not)."""
    stripe_invoice_id = stripe_id(obj.get("id"))
    if stripe_invoice_id is None:
        raise NotUnderstood("its id is not a Stripe id")
    status = obj.get("status")
    if not isinstance(status, str) or status not in STRIPE_STATUS_RANK:
        raise NotUnderstood("its status is none of Stripe's invoice statuses")
    metadata = obj.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise NotUnderstood("its metadata is not an object")
    attempt_count = obj.get("attempt_count")
    if isinstance(attempt_count, bool) or not isinstance(attempt_count, int):
        attempt_count = None
    return InvoiceSnapshot(
        stripe_invoice_id=stripe_invoice_id,
        status=status,
        our_id=_our_id(metadata.get("invoice_id")),
        attempt_count=attempt_count,
    )


def _our_id(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    if isinstance(value, int):
        return None if value <= 0 else value if value <= MAX_PK else 0
    if not (value.isascii() and value.isdigit()):
        return None
    return int(value) if len(value) <= len(str(MAX_PK)) and int(value) <= MAX_PK else 0


def _our_invoice(snapshot: InvoiceSnapshot) -> Invoice | None:
    query = (
        Invoice.objects.filter(pk=snapshot.our_id)
        if snapshot.our_id is not None
        else Invoice.objects.filter(stripe_invoice_id=snapshot.stripe_invoice_id)
    )
    return query.select_for_update().select_related("customer").first()


def apply_invoice_event(row: StripeWebhookEvent, obj: dict[str, Any]) -> None:
    """Move our invoice forward to what the Stripe invoice's status stands for.

    The event's own snapshot of the invoice decides, not the event type, and only a transition
    that invoices.ALLOWED permits from our current status is made: Stripe's statuses only move
    forward, so an event delivered late (invoice.finalized after invoice.paid) finds ours
    already further and changes nothing. A snapshot not understood changes nothing.
    """
    if obj.get("object") != "invoice":
        row.detail = "event type not handled"
        return
    try:
        snapshot = invoice_snapshot(obj)
    except NotUnderstood as exc:
        row.detail = f"invoice not understood: {exc}"
        return
    invoice = _our_invoice(snapshot)
    if invoice is None:
        row.detail = "not one of our invoices"
        return
    row.invoice = invoice
    stripe_status = snapshot.status
    if invoice.stripe_invoice_id and invoice.stripe_invoice_id != snapshot.stripe_invoice_id:
        theirs = snapshot.stripe_invoice_id
        row.detail = f"ours is {invoice.stripe_invoice_id} in Stripe, not {theirs}"
        return
    record_stripe_status(
        invoice_id=invoice.pk, stripe_status=stripe_status, at=row.created, stripe_invoice=obj
    )
    before = invoice.status
    target = STRIPE_TO_OURS.get(stripe_status)
    if invoice.status == S.DRAFT:
        row.detail = "ours is still a draft: only we finalize"
    elif target == S.PAID and carried_to_balance(obj):
        # Below the minimum charge (or a credit): Stripe marks it paid without a charge and
        # carries the amount to the customer's balance. Not a payment: ours stays as it is.
        row.outcome = StripeWebhookEvent.Outcome.UNCHANGED
        row.detail = (
            f"Stripe settled it without a charge (amount due {obj.get('amount_due')}, paid "
            f"{obj.get('amount_paid')}): carried to the customer's balance, ending balance "
            f"{obj.get('ending_balance')}"
        )
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
            "stripe_invoice_id": snapshot.stripe_invoice_id,
            "stripe_status": stripe_status,
            "from": before,
            "to": Invoice.objects.values_list("status", flat=True).get(pk=invoice.pk),
            "outcome": row.outcome,
            "attempt_count": snapshot.attempt_count,
        },
    )


# --- Thin events: meter errors ----------------------------------------------------------------


def apply_meter_error_report(row: StripeWebhookEvent, related: dict[str, Any]) -> None:
    """Stripe found errors in meter events we sent (a thin event: the details are Stripe's to
    fetch). Kept for finance staff with the meter it names; usage reconcile shows the gap."""
    meter = stripe_id(related.get("id")) or "?"
    row.outcome = StripeWebhookEvent.Outcome.APPLIED
    row.detail = (
        f"Stripe reports errors in meter events of meter {meter} ({row.type}): open the "
        "meter in the Stripe dashboard for the error summary; `reconcile` compares what we "
        "reported with Stripe's totals"
    )


# Event type -> what it does here. Every invoice event carries the invoice's snapshot, and the
# snapshot's status decides (apply_invoice_event), so they share one handler.
HANDLERS: dict[str, Handler] = {
    "invoice.finalized": apply_invoice_event,
    "invoice.paid": apply_invoice_event,
    "invoice.payment_failed": apply_invoice_event,
    "invoice.voided": apply_invoice_event,
    "invoice.marked_uncollectible": apply_invoice_event,
    "checkout.session.completed": payment_methods.apply_checkout_completed,
    "setup_intent.succeeded": payment_methods.apply_setup_intent_succeeded,
    "customer.updated": payment_methods.apply_customer_updated,
    "v1.billing.meter.error_report_triggered": apply_meter_error_report,
    "v1.billing.meter.no_meter_found": apply_meter_error_report,
}
