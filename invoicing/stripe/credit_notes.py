"""Credit notes in Stripe: each credit note issued here (BILLING_BACKEND=stripe) is created once
as a Stripe credit note on the invoice's Stripe invoice, through the outbox
(StripeCreditNoteSync, invoicing.stripe.outbox): intent recorded with the note, the write made
after commit with an idempotency key derived from our id, a lost answer found again by our id
in the note's metadata.

Each credited line is sent as a `custom_line_item` (its description, quantity 1, the credited
amount), since a Stripe invoice's line ids are not stored here; the metadata names our note,
invoice and lines. Our reason is the note's `memo` (Stripe's `reason` is a fixed list). On an
open invoice the note lowers what is due; on a paid one Stripe needs the money to go somewhere,
so the amount is credited to the customer's Stripe balance (`credit_amount`), where their next
invoice uses it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.services import record_audit
from invoicing.models import CreditNote, StripeCreditNoteSync, StripeInvoiceSync
from invoicing.stripe import client, outbox


def _unresolved(sync: StripeCreditNoteSync) -> str:
    return (
        f"still not delivered {outbox.RESEND_WINDOW} after the first attempt ({sync.attempts} "
        f"attempts; last error: {sync.last_error or '-'}): not resent automatically. Check "
        "the credit note in Stripe, then retry from the admin."
    )


def _audit(action: str, sync: StripeCreditNoteSync, **data: Any) -> None:
    note = CreditNote.objects.select_related("invoice__customer").get(pk=sync.credit_note_id)
    record_audit(
        action=action,
        obj=note,
        customer_external_id=note.invoice.customer.external_id,
        data={"number": note.number, "attempts": sync.attempts, **data},
    )


DELIVERIES = outbox.Outbox(
    model=StripeCreditNoteSync,
    done=StripeCreditNoteSync.Status.DELIVERED,
    unresolved=_unresolved,
    on_flagged=lambda sync: _audit("credit_note.stripe_needs_attention", sync),
    on_failed=lambda sync, error: _audit(
        "credit_note.stripe_failed", sync, error=str(error), code=error.code
    ),
)


def deliver_credit_note(*, credit_note_id: int, now: datetime | None = None) -> str | None:
    """Create the credit note in Stripe once; safe to run any number of times. Returns the
    sync's status, or None when there was nothing to do. Raises TransientStripeError for the
    task to retry."""
    now = now or timezone.now()
    sync_id = _begin(credit_note_id=credit_note_id, now=now)
    if sync_id is None:
        return None
    return outbox.attempt(DELIVERIES, row_id=sync_id, send=lambda: _push(sync_id=sync_id, now=now))


@transaction.atomic
def _begin(*, credit_note_id: int, now: datetime) -> int | None:
    sync = StripeCreditNoteSync.objects.select_for_update().filter(credit_note_id=credit_note_id)
    row = sync.first()
    if row is None:
        return None  # issued with another backend
    return row.pk if outbox.begin(DELIVERIES, row, now=now) else None


def credit_note_params(note: CreditNote, stripe_invoice_id: str, *, paid: bool) -> dict[str, Any]:
    lines = list(note.lines.select_related("invoice_line").order_by("position"))
    params: dict[str, Any] = {
        "invoice": stripe_invoice_id,
        "memo": note.reason[:5000],
        "lines": [
            {
                "type": "custom_line_item",
                "description": f"{line.description} (line {line.invoice_line.position})"[:500],
                "quantity": 1,
                "unit_amount": line.amount_minor,
            }
            for line in lines
        ],
        "metadata": {
            "credit_note_id": str(note.pk),
            "credit_note_number": note.number,
            "invoice_id": str(note.invoice_id),
            "invoice_line_ids": ",".join(str(line.invoice_line_id) for line in lines)[:500],
        },
    }
    if paid:
        params["credit_amount"] = note.total_minor
    return params


def _push(*, sync_id: int, now: datetime) -> None:
    sync = StripeCreditNoteSync.objects.select_related("credit_note__invoice").get(pk=sync_id)
    note = sync.credit_note
    stripe_invoice_id = note.invoice.stripe_invoice_id
    if not stripe_invoice_id:
        # The invoice's own delivery has not created it yet: a transient wait, retried.
        raise client.TransientStripeError(
            f"invoice {note.invoice} is not in Stripe yet; the credit note waits for it",
            code="invoice_not_delivered",
        )
    found = None
    if sync.attempts > 1:  # an earlier attempt may have created it and lost the answer
        found = client.find_credit_note(stripe_invoice_id=stripe_invoice_id, credit_note_id=note.pk)
    if found is None:
        stripe_invoice = client.retrieve_invoice(stripe_invoice_id)
        if stripe_invoice["status"] not in ("open", "paid"):
            raise client.PermanentStripeError(
                f"Stripe invoice {stripe_invoice_id} is {stripe_invoice['status']}: it takes no "
                "credit note",
                code="invoice_not_creditable",
            )
        params = credit_note_params(
            note, stripe_invoice_id, paid=stripe_invoice["status"] == "paid"
        )
        found = client.create_credit_note(
            params=params,
            key=client.idempotency_key(f"cn-{note.pk}", attempt=sync.key_attempt, params=params),
        )
    if found.get("total") != note.total_minor:
        raise client.PermanentStripeError(
            f"Stripe credit note {found['id']} totals {found.get('total')}, ours "
            f"{note.total_minor}",
            code="total_mismatch",
        )
    _record(
        sync_id=sync.pk,
        stripe_credit_note_id=found["id"],
        pre_payment_minor=int(found.get("pre_payment_amount") or 0),
        now=now,
    )


@transaction.atomic
def _record(
    *, sync_id: int, stripe_credit_note_id: str, pre_payment_minor: int, now: datetime
) -> None:
    """Mark the note delivered; the part Stripe took off the invoice before payment
    (`pre_payment_amount`) lowers what we recorded Stripe's invoice owes, so reconcile keeps
    comparing Stripe's `amount_due` with ours. Once only: a delivered note is not recorded again."""
    sync = StripeCreditNoteSync.objects.select_for_update().get(pk=sync_id)
    if sync.status == StripeCreditNoteSync.Status.DELIVERED:
        return
    if pre_payment_minor:
        invoice_sync = (
            StripeInvoiceSync.objects.select_for_update()
            .filter(invoice_id=sync.credit_note.invoice_id, amount_due__isnull=False)
            .first()
        )
        if invoice_sync is not None:
            invoice_sync.amount_due = (invoice_sync.amount_due or 0) - pre_payment_minor
            invoice_sync.save(update_fields=["amount_due", "updated_at"])
    CreditNote.objects.filter(pk=sync.credit_note_id).update(
        stripe_credit_note_id=stripe_credit_note_id
    )
    sync.status = StripeCreditNoteSync.Status.DELIVERED
    sync.delivered_at = now
    sync.last_error = ""
    sync.save(update_fields=["status", "delivered_at", "last_error", "updated_at"])
    _audit("credit_note.stripe_delivered", sync, stripe_credit_note_id=stripe_credit_note_id)


def retry(*, credit_note_id: int, now: datetime, user: object = None) -> str | None:
    """Finance staff retry a failed or flagged delivery: pending again, queued after commit.
    Returns the status it had, or None when it was delivered already."""
    from invoicing import tasks

    with transaction.atomic():
        sync = StripeCreditNoteSync.objects.select_for_update().get(credit_note_id=credit_note_id)
        before = outbox.reopen(DELIVERIES, sync, now=now)
        if before is not None:
            _audit("credit_note.stripe_retry", sync, before=before)
            tasks.deliver_credit_note.delay_on_commit(credit_note_id)
    return before


def resume(*, now: datetime) -> int:
    """Queue again the pending deliveries a lost worker left (the resume beat)."""
    from invoicing import tasks

    ids = list(outbox.stale(DELIVERIES, now=now).values_list("credit_note_id", flat=True))
    for credit_note_id in ids:
        tasks.deliver_credit_note.delay(credit_note_id)
    return len(ids)


def reconcile_with_stripe() -> list[str]:
    """Every credit note for Stripe is delivered, and Stripe's note totals what ours does."""
    problems: list[str] = []
    syncs = StripeCreditNoteSync.objects.select_related("credit_note__invoice").order_by("pk")
    by_invoice: dict[str, dict[str, dict[str, Any]]] = {}
    for sync in syncs:
        note = sync.credit_note
        if sync.status != StripeCreditNoteSync.Status.DELIVERED:
            problems.append(f"credit note {note.number}: Stripe delivery {sync.status}")
            continue
        stripe_invoice_id = note.invoice.stripe_invoice_id or ""
        if stripe_invoice_id not in by_invoice:
            by_invoice[stripe_invoice_id] = {
                found["id"]: found
                for found in client.list_credit_notes(stripe_invoice_id=stripe_invoice_id)
            }
        theirs = by_invoice[stripe_invoice_id].get(note.stripe_credit_note_id or "")
        if theirs is None:
            problems.append(
                f"credit note {note.number}: {note.stripe_credit_note_id} is not on Stripe "
                f"invoice {stripe_invoice_id}"
            )
        elif theirs.get("total") != note.total_minor or theirs.get("status") != "issued":
            problems.append(
                f"credit note {note.number}: Stripe has {theirs.get('total')} "
                f"({theirs.get('status')}), ours {note.total_minor}"
            )
    return problems
