"""Invoices in Stripe: one Stripe invoice per finalized invoice, one item per line, exactly
once, whatever fails between us and Stripe; later statuses (paid, void, uncollectible here)
pushed after it.

A delivery is an outbox row (StripeInvoiceSync, invoicing.stripe.outbox): begun in one
transaction, pushed to Stripe outside any, its answer recorded in a new one. A re-run finds
what an earlier one created (the invoice by our id in its metadata, the items by line id)
before it creates anything. This module also owns how Stripe's invoice statuses map to ours
and which recorded Stripe status wins.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import record_audit
from invoicing import tasks
from invoicing.models import Invoice, InvoiceLine, StripeInvoiceSync
from invoicing.services.invoices import TransitionNotAllowed
from invoicing.stripe import client, outbox, payment_methods
from invoicing.stripe.customers import ensure_stripe_customer

S = Invoice.Status
# The status of our invoice that a Stripe invoice status stands for.
STRIPE_TO_OURS = {
    "open": S.FINALIZED,
    "paid": S.PAID,
    "void": S.VOID,
    "uncollectible": S.UNCOLLECTIBLE,
}
# Keyed by str: a model's status field reads as a plain str (an Invoice.Status is one).
OURS_TO_STRIPE: dict[str, str] = {ours: theirs for theirs, ours in STRIPE_TO_OURS.items()}
# Stripe's invoice statuses only move forward (draft -> open -> uncollectible -> paid | void).
STRIPE_STATUS_RANK = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}


# Stripe's limit of invoice items per invoice.
MAX_INVOICE_ITEMS = 250
AWAITING_REASON = (
    "awaiting payment method: the Stripe customer has no default payment method, so the "
    "invoice is open in Stripe and not charged; it is charged once the customer adds one "
    "(portal billing page, or a Checkout link from the admin)"
)


def _key(suffix: str, sync: StripeInvoiceSync, params: dict[str, Any] | None = None) -> str:
    return client.idempotency_key(suffix, attempt=sync.key_attempt, params=params)


def carried_to_balance(stripe_invoice: dict[str, Any]) -> bool:
    """Whether Stripe settled the invoice without charging it: below the currency's minimum
    charge (marked paid, amount_paid 0, the amount due carried to the customer's balance) or
    a negative total (credited to the balance). Not a payment: ours is not marked paid."""
    if stripe_invoice.get("status") != "paid" or stripe_invoice.get("paid_out_of_band"):
        return False
    due = stripe_invoice.get("amount_due") or 0
    paid = stripe_invoice.get("amount_paid") or 0
    return paid < due or (stripe_invoice.get("total") or 0) < 0


def _unresolved(sync: StripeInvoiceSync) -> str:
    return (
        f"still not delivered {outbox.RESEND_WINDOW} after the first attempt ({sync.attempts} "
        f"attempts; last error: {sync.last_error or '-'}): not resent automatically. Check "
        "the invoice in Stripe, then retry from the admin."
    )


def _audit_flagged(sync: StripeInvoiceSync) -> None:
    invoice = Invoice.objects.select_related("customer").get(pk=sync.invoice_id)
    record_audit(
        action="invoice.stripe_needs_attention",
        obj=invoice,
        customer_external_id=invoice.customer.external_id,
        data={"attempts": sync.attempts, "stripe_invoice_id": invoice.stripe_invoice_id},
    )


def _audit_failed(sync: StripeInvoiceSync, error: client.StripeSyncError) -> None:
    invoice = Invoice.objects.select_related("customer").get(pk=sync.invoice_id)
    record_audit(
        action="invoice.stripe_failed",
        obj=invoice,
        customer_external_id=invoice.customer.external_id,
        data={"error": str(error), "code": error.code, "http_status": error.http_status},
    )


DELIVERIES = outbox.Outbox(
    model=StripeInvoiceSync,
    done=StripeInvoiceSync.Status.DELIVERED,
    unresolved=_unresolved,
    on_flagged=_audit_flagged,
    on_failed=_audit_failed,
)


def deliver_invoice(*, invoice_id: int, now: datetime | None = None) -> str | None:
    """Create, fill, finalize and charge (or send) the Stripe invoice of a finalized invoice,
    or bring it in line with a later status of ours.

    Safe to run any number of times; returns the sync's status, or None if there was nothing
    to do. Raises TransientStripeError (a ConnectionError) for the task to retry.
    """
    now = now or timezone.now()
    sync_id = _begin_invoice_sync(invoice_id=invoice_id, now=now)
    if sync_id is None:
        return None
    return outbox.attempt(
        DELIVERIES, row_id=sync_id, send=lambda: _push_invoice(sync_id=sync_id, now=now)
    )


def _stripe_behind(invoice: Invoice, sync: StripeInvoiceSync) -> bool:
    """Whether a delivered invoice was paid, voided or written off here since, and Stripe,
    as last seen, does not say so yet."""
    if invoice.status in (S.DRAFT, S.FINALIZED):
        return False
    return sync.stripe_status != OURS_TO_STRIPE[invoice.status]


@transaction.atomic
def _begin_invoice_sync(*, invoice_id: int, now: datetime) -> int | None:
    invoice = Invoice.objects.select_related("customer").get(pk=invoice_id)
    if invoice.status == S.DRAFT:
        return None
    sync = StripeInvoiceSync.objects.select_for_update().filter(invoice=invoice).first()
    started = invoice.stripe_invoice_id or (sync is not None and sync.attempts)
    if invoice.status != S.FINALIZED and not started:
        return None  # paid, voided or written off here before it ever reached Stripe
    if sync is None:
        sync = outbox.get_or_create_locked(StripeInvoiceSync, invoice=invoice)
    settled_here = (
        StripeInvoiceSync.Status.DELIVERED,
        StripeInvoiceSync.Status.AWAITING_PAYMENT_METHOD,
    )
    if sync.status in settled_here and _stripe_behind(invoice, sync):
        # Changed here after delivery: bring Stripe in line (new keys, a new 24-hour window).
        sync.status = StripeInvoiceSync.Status.PENDING
        sync.first_attempt_at = None
        sync.last_error = ""
        record_audit(
            action="invoice.stripe_status_push",
            obj=invoice,
            customer_external_id=invoice.customer.external_id,
            data={"status": invoice.status, "stripe_status": sync.stripe_status},
        )
    return sync.pk if outbox.begin(DELIVERIES, sync, now=now) else None


def _invoice_params(invoice: Invoice, stripe_customer_id: str) -> dict[str, Any]:
    period = invoice.period
    params: dict[str, Any] = {
        "customer": stripe_customer_id,
        "auto_advance": False,  # we finalize it once every item is in
        "collection_method": settings.STRIPE_COLLECTION_METHOD,
        "currency": invoice.currency.lower(),
        "pending_invoice_items_behavior": "exclude",
        "description": (
            f"Invoice {invoice.number}: usage from {period.start:%Y-%m-%d %H:%M} "
            f"to {period.end:%Y-%m-%d %H:%M} UTC"
        ),
        "metadata": {
            "invoice_id": str(invoice.pk),
            "invoice_number": invoice.number,
            "period_id": str(period.pk),
            "period_start": period.start.isoformat(),
            "period_end": period.end.isoformat(),
            "customer_external_id": invoice.customer.external_id,
        },
    }
    if settings.STRIPE_COLLECTION_METHOD == "send_invoice":
        params["days_until_due"] = settings.STRIPE_DAYS_UNTIL_DUE
    return params


def _item_params(
    invoice: Invoice, line: InvoiceLine, stripe_customer_id: str, stripe_invoice_id: str
) -> dict[str, Any]:
    window = line.source_period or invoice.period
    quantity = f"{line.quantity.normalize():f}"
    unit = line.meter.unit if line.meter else ""
    description = line.description
    if line.kind != InvoiceLine.Kind.CAP_CREDIT:
        description = f"{description} ({quantity} {unit})".replace(" )", ")")
    metadata = {
        "invoice_id": str(invoice.pk),
        "line_id": str(line.pk),
        "kind": line.kind,
        "quantity": quantity,
    }
    if line.aggregate_id is not None:
        metadata["aggregate_id"] = str(line.aggregate_id)
    if line.meter is not None:
        metadata["meter"] = line.meter.code
    return {
        "customer": stripe_customer_id,
        "invoice": stripe_invoice_id,
        "currency": invoice.currency.lower(),
        # The amount as rated here (rounded once): Stripe must not re-rate. Cap credits are
        # negative.
        "amount": line.amount_minor,
        "description": description[:500],
        # Stripe's period end is inclusive; ours is half-open.
        "period": {"start": client.epoch(window.start), "end": client.epoch(window.end) - 1},
        "metadata": metadata,
    }


def _push_invoice(*, sync_id: int, now: datetime) -> None:
    sync = StripeInvoiceSync.objects.select_related("invoice__customer", "invoice__period").get(
        pk=sync_id
    )
    invoice = sync.invoice
    lines = list(invoice.lines.select_related("meter", "source_period").order_by("position", "pk"))
    if len(lines) > MAX_INVOICE_ITEMS and not invoice.stripe_invoice_id:
        raise client.PermanentStripeError(
            f"invoice {invoice.number} has {len(lines)} lines; a Stripe invoice holds at most "
            f"{MAX_INVOICE_ITEMS} items: not sent to Stripe (bill it locally, or credit and "
            "reissue it in parts)",
            code="too_many_lines",
        )
    stripe_customer_id = ensure_stripe_customer(customer_id=invoice.customer_id, now=now)

    stripe_invoice_id = invoice.stripe_invoice_id
    if not stripe_invoice_id:
        found = None
        if sync.attempts > 1 or sync.key_attempt:  # an earlier attempt may have created it
            found = client.find_invoice(
                stripe_customer_id=stripe_customer_id, invoice_id=invoice.pk
            )
        if found is None:
            params = _invoice_params(invoice, stripe_customer_id)
            found = client.create_invoice(
                params=params, key=_key(f"inv-{invoice.pk}", sync, params)
            )
        stripe_invoice_id = _record_stripe_invoice(
            invoice_id=invoice.pk,
            stripe_invoice_id=found["id"],
            stripe_customer_id=stripe_customer_id,
        )

    ours = {str(line.pk) for line in lines}
    existing: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in client.list_invoice_items(stripe_invoice_id=stripe_invoice_id):
        existing[(item.get("metadata") or {}).get("line_id", "")].append(item)
    strangers = [i["id"] for key, items in existing.items() if key not in ours for i in items]
    doubles = [key for key, items in existing.items() if key in ours and len(items) > 1]
    if strangers or doubles:
        raise client.PermanentStripeError(
            f"Stripe invoice {stripe_invoice_id} holds items that are not ours one to one "
            f"(unknown: {strangers}, lines with several items: {doubles}): not finalized",
            code="items_mismatch",
        )
    for line in lines:
        found_items = existing.get(str(line.pk))
        if found_items:
            item = found_items[0]
        else:
            params = _item_params(invoice, line, stripe_customer_id, stripe_invoice_id)
            item = client.create_invoice_item(
                params=params, key=_key(f"inv-{invoice.pk}-item-{line.pk}", sync, params)
            )
        if line.stripe_invoice_item_id != item["id"]:
            _record_line_item(line_id=line.pk, stripe_invoice_item_id=item["id"])

    stripe_invoice = client.retrieve_invoice(stripe_invoice_id)
    # Ours as it is now: finance staff may have voided it, or marked it paid, meanwhile.
    status = Invoice.objects.values_list("status", flat=True).get(pk=invoice.pk)
    if stripe_invoice["status"] == "draft":
        if stripe_invoice["total"] != invoice.total_minor:
            raise client.PermanentStripeError(
                f"Stripe draft {stripe_invoice_id} totals {stripe_invoice['total']}, ours "
                f"{invoice.total_minor}: not finalized",
                code="total_mismatch",
            )
        # auto_advance: Stripe runs collection from now on (payment retries; for send_invoice
        # the one e-mail with the hosted payment link, and its reminders: we never call /send).
        # Without it, the invoice stays open and quiet, to be voided or settled just below.
        collect = status == S.FINALIZED
        suffix = f"inv-{invoice.pk}-finalize" + ("" if collect else "-quiet")
        stripe_invoice = client.finalize_invoice(
            stripe_invoice_id,
            key=_key(suffix, sync, {"auto_advance": collect}),
            auto_advance=collect,
        )
    if status != S.FINALIZED:
        stripe_invoice = _settle_in_stripe(invoice, sync, status, stripe_invoice)
    # Charge only what is still due here too (ours may be paid or void by now).
    collected = sync.collected_at is not None or status != S.FINALIZED
    payment_failure = ""
    awaiting = False
    if stripe_invoice["status"] == "open" and not collected:
        if settings.STRIPE_COLLECTION_METHOD == "charge_automatically":
            stripe_invoice, payment_failure, awaiting = _charge(
                invoice, sync, stripe_invoice, stripe_customer_id, now=now
            )
        collected = not awaiting  # send_invoice: Stripe e-mailed it at finalization
    _record_delivered(
        sync_id=sync.pk,
        stripe_invoice=stripe_invoice,
        stripe_customer_id=stripe_customer_id,
        payment_failure=payment_failure,
        awaiting=awaiting,
        collected=collected or stripe_invoice["status"] != "open",
        now=now,
    )


def _charge(
    invoice: Invoice,
    sync: StripeInvoiceSync,
    stripe_invoice: dict[str, Any],
    stripe_customer_id: str,
    *,
    now: datetime,
) -> tuple[dict[str, Any], str, bool]:
    """Charge an open Stripe invoice to the customer's payment method: (the invoice as Stripe
    answered, Stripe's reason if the charge was declined, whether it awaits a payment method).

    Whether the customer has a payment method is asked of Stripe first, never read from an
    error text: without one, the invoice awaits a method (charged once one is added). A
    decline (402) is a payment failure, not a delivery failure: Stripe keeps the invoice open
    and retries it by its own schedule."""
    if not payment_methods.can_charge(stripe_customer_id, now=now):
        return stripe_invoice, "", True
    try:
        paid = client.pay_invoice(
            stripe_invoice["id"], key=_key(f"inv-{invoice.pk}-pay", sync, client.PAY)
        )
    except client.CardDeclined as exc:
        return client.retrieve_invoice(stripe_invoice["id"]), client.payment_error(exc), False
    except client.PermanentStripeError as exc:
        # The method may have been detached since we asked: ask again, then decide.
        if exc.http_status == 400 and not payment_methods.can_charge(stripe_customer_id, now=now):
            return stripe_invoice, "", True
        raise
    return paid, "", False


def _settle_in_stripe(
    invoice: Invoice, sync: StripeInvoiceSync, status: str, stripe_invoice: dict[str, Any]
) -> dict:
    """Give the Stripe invoice the status ours has (paid, void or uncollectible here)."""
    target, current = OURS_TO_STRIPE[status], stripe_invoice["status"]
    if current == target:
        return stripe_invoice
    if current not in ("open", "uncollectible"):  # paid or void in Stripe: nothing undoes that
        advice = (
            "refund it in Stripe (or issue a credit note), then resolve ours"
            if current == "paid"
            else "resolve it by hand"
        )
        raise client.PermanentStripeError(
            f"ours is {status}, but Stripe invoice {stripe_invoice['id']} is {current}: {advice}",
            code="status_conflict",
        )
    stripe_id = stripe_invoice["id"]
    if target == "void":
        return client.void_invoice(stripe_id, key=_key(f"inv-{invoice.pk}-void", sync, {}))
    if target == "paid":
        return client.pay_invoice(
            stripe_id,
            key=_key(f"inv-{invoice.pk}-paid-out-of-band", sync, client.PAY_OUT_OF_BAND),
            out_of_band=True,
        )
    # target "uncollectible", and Stripe's is open (uncollectible would equal the target)
    return client.mark_uncollectible(
        stripe_id, key=_key(f"inv-{invoice.pk}-uncollectible", sync, {})
    )


@transaction.atomic
def _record_stripe_invoice(
    *, invoice_id: int, stripe_invoice_id: str, stripe_customer_id: str
) -> str:
    invoice = Invoice.objects.select_for_update().select_related("customer").get(pk=invoice_id)
    if invoice.stripe_invoice_id:
        return invoice.stripe_invoice_id
    invoice.stripe_invoice_id = stripe_invoice_id
    invoice.save(update_fields=["stripe_invoice_id", "updated_at"])
    record_audit(
        action="invoice.stripe_created",
        obj=invoice,
        customer_external_id=invoice.customer.external_id,
        data={
            "number": invoice.number,
            "stripe_invoice_id": stripe_invoice_id,
            "stripe_customer_id": stripe_customer_id,
        },
    )
    return stripe_invoice_id


@transaction.atomic
def _record_line_item(*, line_id: int, stripe_invoice_item_id: str) -> None:
    InvoiceLine.objects.filter(pk=line_id).update(stripe_invoice_item_id=stripe_invoice_item_id)


@transaction.atomic
def _record_delivered(
    *,
    sync_id: int,
    stripe_invoice: dict[str, Any],
    stripe_customer_id: str,
    payment_failure: str,
    awaiting: bool,
    collected: bool,
    now: datetime,
) -> None:
    sync = StripeInvoiceSync.objects.select_for_update().get(pk=sync_id)
    invoice = Invoice.objects.select_related("customer").get(pk=sync.invoice_id)
    if sync.status != StripeInvoiceSync.Status.PENDING:
        return
    hosted_url = stripe_invoice.get("hosted_invoice_url") or ""
    if hosted_url.startswith("https://") and invoice.stripe_hosted_invoice_url != hosted_url:
        invoice.stripe_hosted_invoice_url = hosted_url
        invoice.save(update_fields=["stripe_hosted_invoice_url", "updated_at"])
    sync.status = (
        StripeInvoiceSync.Status.AWAITING_PAYMENT_METHOD
        if awaiting
        else StripeInvoiceSync.Status.DELIVERED
    )
    sync.delivered_at = now
    sync.collected_at = sync.collected_at or (now if collected else None)
    sync.last_error = AWAITING_REASON if awaiting else ""
    if payment_failure or not awaiting:
        sync.payment_failure = payment_failure
    record_amounts(sync, stripe_invoice)
    # Webhooks, which carry Stripe's time, take precedence, unless this answer is further along.
    if sync.stripe_status_at is None or (
        STRIPE_STATUS_RANK.get(stripe_invoice["status"], -1)
        > STRIPE_STATUS_RANK.get(sync.stripe_status, -1)
    ):
        sync.stripe_status = stripe_invoice["status"]
    sync.save()
    record_audit(
        action="invoice.stripe_delivered",
        obj=invoice,
        customer_external_id=invoice.customer.external_id,
        data={
            "number": invoice.number,
            "stripe_invoice_id": stripe_invoice["id"],
            "stripe_customer_id": stripe_customer_id,
            "stripe_status": stripe_invoice["status"],
            "collection_method": settings.STRIPE_COLLECTION_METHOD,
            "stripe_invoice_items": dict(
                invoice.lines.order_by("position").values_list("pk", "stripe_invoice_item_id")
            ),
            "payment_failure": payment_failure,
            "awaiting_payment_method": awaiting,
            "amount_due": sync.amount_due,
            "amount_paid": sync.amount_paid,
            "ending_balance": sync.ending_balance,
            "carried_to_balance": carried_to_balance(stripe_invoice),
            "attempts": sync.attempts,
        },
    )


def record_amounts(sync: StripeInvoiceSync, stripe_invoice: dict[str, Any]) -> None:
    """Keep the Stripe invoice's amounts as seen on the (locked) sync; the caller saves."""
    for name in ("amount_due", "amount_paid", "starting_balance", "ending_balance"):
        value = stripe_invoice.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(sync, name, value)


@transaction.atomic
def retry_invoice_sync(*, invoice_id: int, user: object = None, now: datetime) -> None:
    """Finance staff resume a failed or flagged delivery (or deliver one never attempted).

    The 24-hour clock restarts: a person checked Stripe and decided. The next run looks up
    what earlier runs created (invoice by metadata, items by line) before creating anything.
    """
    invoice = Invoice.objects.select_related("customer").get(pk=invoice_id)
    if invoice.status == S.DRAFT:
        raise TransitionNotAllowed(f"invoice {invoice} is a draft: nothing to deliver")
    sync = outbox.get_or_create_locked(StripeInvoiceSync, invoice=invoice)
    before = outbox.reopen(DELIVERIES, sync, now=now)
    if before is None:
        return
    record_audit(
        action="invoice.stripe_retried",
        obj=invoice,
        user=user,
        customer_external_id=invoice.customer.external_id,
        data={"from": before, "attempts": sync.attempts, "last_error": sync.last_error},
    )
    tasks.deliver_invoice.delay_on_commit(invoice.pk)


def resume_deliveries(*, now: datetime) -> int:
    """Queue again the deliveries a lost worker or a lost task left (beat, every few minutes):
    pending ones untouched for outbox.STALE_ATTEMPT, and finalized invoices of the last day
    that never started one. Past the resend window, the task flags them instead of sending.
    Returns how many were queued."""
    if settings.BILLING_BACKEND != "stripe":
        return 0
    pending = outbox.stale(DELIVERIES, now=now).values_list("invoice_id", flat=True)
    never = Invoice.objects.filter(
        status=S.FINALIZED,
        finalized_at__gte=now - outbox.RESEND_WINDOW,
        finalized_at__lt=now - outbox.STALE_ATTEMPT,
        stripe_sync__isnull=True,
    ).values_list("pk", flat=True)
    invoice_ids = sorted({*pending, *never})
    for invoice_id in invoice_ids:
        tasks.deliver_invoice.delay(invoice_id)
    return len(invoice_ids)


@transaction.atomic
def record_stripe_status(
    *,
    invoice_id: int,
    stripe_status: str,
    at: datetime,
    stripe_invoice: dict[str, Any] | None = None,
) -> None:
    """Keep a webhook's word on the Stripe invoice's status (Stripe's time `at`) on the
    invoice's delivery, if it is newer than what the delivery recorded."""
    sync = StripeInvoiceSync.objects.select_for_update().filter(invoice_id=invoice_id).first()
    if sync is not None and _later_stripe_status(sync, stripe_status, at):
        sync.stripe_status = stripe_status
        sync.stripe_status_at = at
        if stripe_invoice is not None:
            record_amounts(sync, stripe_invoice)
        if (
            sync.status == StripeInvoiceSync.Status.AWAITING_PAYMENT_METHOD
            and stripe_status != "open"
        ):  # paid on Stripe's page, voided or written off there: nothing awaits any more
            sync.status = StripeInvoiceSync.Status.DELIVERED
            sync.last_error = ""
        sync.save()


def _later_stripe_status(sync: StripeInvoiceSync, stripe_status: str, created: datetime) -> bool:
    """Whether an event's status is newer than the one recorded on the sync.

    A status further along always wins, and one further back never does: events of the same
    second (`created` has whole seconds), and API answers recorded without a time, arrive in
    any order. Between equal ranks, the event's time decides.
    """
    new = STRIPE_STATUS_RANK.get(stripe_status, -1)
    old = STRIPE_STATUS_RANK.get(sync.stripe_status, -1)
    if new != old:
        return new > old
    return sync.stripe_status_at is None or created >= sync.stripe_status_at
