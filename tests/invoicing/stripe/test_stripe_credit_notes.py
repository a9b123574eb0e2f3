"""Credit notes through Stripe: each one created once as a Stripe credit note on the invoice's
Stripe invoice (idempotency key from our id, found again by metadata after a lost answer),
lowering what Stripe says is due; reconcile compares them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.exceptions import Retry
from django.utils import timezone

from audit.models import AuditEntry
from invoicing import tasks
from invoicing.models import CreditNote, StripeCreditNoteSync
from invoicing.services import credit_notes, invoices
from invoicing.services.reconcile import reconcile
from invoicing.stripe import credit_notes as stripe_credit_notes
from tests.invoicing.stripe.conftest import finalize

pytestmark = pytest.mark.django_db(transaction=True)


def issue(invoice, meter: str, amount: int, reason: str = "duplicate tokens") -> CreditNote:
    line = invoice.lines.get(meter__code=meter)
    return credit_notes.issue_credit_note(
        invoice_id=invoice.pk,
        lines=[credit_notes.CreditLine(line.pk, amount)],
        reason=reason,
        now=timezone.now(),
    )


def test_credit_note_on_an_open_invoice_lowers_what_stripe_says_is_due(open_invoice, fake_stripe):
    note = issue(open_invoice, "llm_tokens", 400)  # delivered when the issue commits

    [theirs] = fake_stripe.credit_notes.values()
    assert theirs["invoice"] == open_invoice.stripe_invoice_id
    assert (theirs["total"], theirs["pre_payment_amount"], theirs["post_payment_amount"]) == (
        400,
        400,
        0,
    )
    assert theirs["memo"] == "duplicate tokens"
    assert theirs["metadata"]["credit_note_id"] == str(note.pk)
    assert theirs["metadata"]["credit_note_number"] == note.number
    assert [(item["type"], item["amount"]) for item in theirs["lines"]["data"]] == [
        ("custom_line_item", 400)
    ]
    stripe_invoice = fake_stripe._invoice_view(fake_stripe.invoices[open_invoice.stripe_invoice_id])
    assert stripe_invoice["amount_due"] == open_invoice.total_minor - 400
    [post] = fake_stripe.requests_to("POST", "/v1/credit_notes")
    assert post.idempotency_key.startswith(f"test-cn-{note.pk}-")  # ids, then the fingerprint
    note.refresh_from_db()
    assert note.stripe_credit_note_id == theirs["id"]
    sync = StripeCreditNoteSync.objects.get(credit_note=note)
    assert (sync.status, sync.attempts) == ("delivered", 1)
    assert AuditEntry.objects.filter(action="credit_note.stripe_delivered").count() == 1
    assert reconcile() == []
    # a re-run (a redelivered task) writes nothing
    tasks.deliver_credit_note.apply(args=[note.pk])
    assert len(fake_stripe.requests_to("POST", "/v1/credit_notes")) == 1


def test_credit_note_on_a_paid_invoice_credits_the_customer_balance(draft_invoice, fake_stripe):
    invoice = finalize(draft_invoice)  # charged at once: paid in Stripe
    assert fake_stripe.invoices[invoice.stripe_invoice_id]["status"] == "paid"
    issue(invoice, "agent_tasks", 15)
    [theirs] = fake_stripe.credit_notes.values()
    assert (theirs["post_payment_amount"], theirs["credit_amount"]) == (15, 15)
    # ours learns of the payment (the webhook does it in production)
    invoices.mark_invoice_paid(invoice_id=invoice.pk, now=timezone.now())
    assert reconcile() == []


@pytest.mark.parametrize("kind", ["timeout", "reset"])
def test_a_lost_answer_is_found_again_not_created_twice(open_invoice, fake_stripe, kind):
    fake_stripe.inject(kind, path=r"/v1/credit_notes", delay=1.0)
    with pytest.raises(Retry):  # the task asks Celery to retry later
        issue(open_invoice, "llm_tokens", 400)
    note = CreditNote.objects.get()
    assert len(fake_stripe.credit_notes) == 1  # Stripe made it; we lost the answer
    tasks.deliver_credit_note.apply(args=[note.pk])  # the retry
    assert len(fake_stripe.credit_notes) == 1
    assert len(fake_stripe.requests_to("POST", "/v1/credit_notes")) == 1  # found by metadata
    note.refresh_from_db()
    assert note.stripe_credit_note_id == next(iter(fake_stripe.credit_notes))
    assert StripeCreditNoteSync.objects.get(credit_note=note).status == "delivered"
    assert reconcile() == []


def test_a_refused_credit_note_fails_visibly_and_reconcile_says_so(open_invoice, fake_stripe):
    # Stripe's invoice was voided there meanwhile: it takes no credit note.
    fake_stripe.set_invoice_status(open_invoice.stripe_invoice_id, "void")
    note = issue(open_invoice, "llm_tokens", 400)
    sync = StripeCreditNoteSync.objects.get(credit_note=note)
    assert sync.status == "failed"
    assert "takes no credit note" in sync.last_error
    assert AuditEntry.objects.filter(action="credit_note.stripe_failed").count() == 1
    assert f"credit note {note.number}: Stripe delivery failed" in reconcile()
    # finance staff retry once Stripe is put right: it is delivered
    fake_stripe.invoices[open_invoice.stripe_invoice_id]["status"] = "open"
    assert stripe_credit_notes.retry(credit_note_id=note.pk, now=timezone.now()) == "failed"
    assert StripeCreditNoteSync.objects.get(credit_note=note).status == "delivered"


def test_a_delivery_left_pending_by_a_lost_worker_is_resumed_once(open_invoice, fake_stripe, clock):
    fake_stripe.inject("500", path=r"/v1/credit_notes", times=1)
    with pytest.raises(Retry):
        issue(open_invoice, "llm_tokens", 400)  # the task's retry message is lost
    note = CreditNote.objects.get()
    assert StripeCreditNoteSync.objects.get(credit_note=note).status == "pending"
    assert tasks.stripe_resume_sync.apply().result["credit_notes"] == 0  # not stale yet
    clock.shift(timedelta(minutes=11))
    assert tasks.stripe_resume_sync.apply().result["credit_notes"] == 1
    assert StripeCreditNoteSync.objects.get(credit_note=note).status == "delivered"
    assert tasks.stripe_resume_sync.apply().result["credit_notes"] == 0
    assert len(fake_stripe.credit_notes) == 1
