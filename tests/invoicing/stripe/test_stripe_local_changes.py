"""An invoice voided, paid or written off here after it went to Stripe: Stripe follows, once,
so it never collects what we no longer claim; a void Stripe cannot make is refused or flagged."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.exceptions import Retry

from audit.models import AuditEntry
from invoicing import tasks
from invoicing.models import Invoice, StripeInvoiceSync
from invoicing.services import invoices
from invoicing.stripe import reconcile
from tests.invoicing.conftest import T0
from tests.invoicing.stripe.conftest import H, finalize, our_lines, stripe_lines

pytestmark = pytest.mark.django_db(transaction=True)

LATER = T0 + 2 * H


@pytest.fixture
def sent_invoice(draft_invoice, fake_stripe, settings):
    """Delivered with collection `send_invoice`: open in Stripe, waiting for the customer."""
    settings.STRIPE_COLLECTION_METHOD = "send_invoice"
    settings.STRIPE_DAYS_UNTIL_DUE = 14
    invoice = finalize(draft_invoice)
    [stripe_invoice] = fake_stripe.invoices_for(invoice.pk)
    assert stripe_invoice["status"] == "open"
    return invoice


def stripe_status_of(fake, invoice):
    [stripe_invoice] = fake.invoices_for(invoice.pk)
    return stripe_invoice["status"]


def test_void_here_voids_it_in_stripe_once(sent_invoice, fake_stripe):
    invoices.void_invoice(invoice_id=sent_invoice.pk, reason="wrong customer", now=LATER)

    assert stripe_status_of(fake_stripe, sent_invoice) == "void"
    [void_call] = fake_stripe.requests_to("POST", r"/v1/invoices/.*/void")
    assert void_call.idempotency_key.startswith(f"test-inv-{sent_invoice.pk}-void-")
    sync = StripeInvoiceSync.objects.get(invoice=sent_invoice)
    assert (sync.status, sync.stripe_status, sync.attempts) == ("delivered", "void", 2)
    push = AuditEntry.objects.get(action="invoice.stripe_status_push")
    assert push.data == {"status": "void", "stripe_status": "open"}
    assert reconcile.reconcile_with_stripe() == []

    before = len(fake_stripe.requests)
    tasks.deliver_invoice.apply(args=[sent_invoice.pk])  # a redelivered task
    assert fake_stripe.requests[before:] == []


def test_paid_here_is_recorded_in_stripe_as_paid_out_of_band(sent_invoice, fake_stripe):
    fake_stripe.decline_payments(fake_stripe.invoices_for(sent_invoice.pk)[0]["customer"])
    invoices.mark_invoice_paid(invoice_id=sent_invoice.pk, now=LATER)  # a bank transfer

    [stripe_invoice] = fake_stripe.invoices_for(sent_invoice.pk)
    assert (stripe_invoice["status"], stripe_invoice["paid_out_of_band"]) == ("paid", True)
    [pay] = fake_stripe.requests_to("POST", r"/v1/invoices/.*/pay")
    assert pay.idempotency_key.startswith(f"test-inv-{sent_invoice.pk}-paid-out-of-band-")
    assert reconcile.reconcile_with_stripe() == []


def test_written_off_then_paid_here_follows_in_stripe(sent_invoice, fake_stripe):
    invoices.mark_invoice_uncollectible(invoice_id=sent_invoice.pk, now=LATER)
    assert stripe_status_of(fake_stripe, sent_invoice) == "uncollectible"
    assert reconcile.reconcile_with_stripe() == []

    invoices.mark_invoice_paid(invoice_id=sent_invoice.pk, now=LATER + H)
    assert stripe_status_of(fake_stripe, sent_invoice) == "paid"
    assert StripeInvoiceSync.objects.get(invoice=sent_invoice).stripe_status == "paid"
    assert reconcile.reconcile_with_stripe() == []


def test_void_while_the_delivery_lost_its_answer_leaves_no_open_draft(
    draft_invoice, fake_stripe, settings, monkeypatch
):
    """Stripe created the invoice but the answer was lost; voided here before the retry: the
    retry finds the draft, completes it, finalizes it without collecting, and voids it."""
    settings.STRIPE_COLLECTION_METHOD = "send_invoice"
    settings.STRIPE_DAYS_UNTIL_DUE = 14
    fake_stripe.inject("reset", path=r"/v1/invoices")  # applied, then the connection drops
    with pytest.raises(Retry):
        finalize(draft_invoice)
    assert len(fake_stripe.invoices) == 1
    assert Invoice.objects.get(pk=draft_invoice.pk).stripe_invoice_id is None

    invoices.void_invoice(invoice_id=draft_invoice.pk, reason="duplicate", now=LATER)

    invoice = Invoice.objects.get(pk=draft_invoice.pk)
    [stripe_invoice] = fake_stripe.invoices_for(invoice.pk)
    assert invoice.stripe_invoice_id == stripe_invoice["id"]
    assert stripe_invoice["status"] == "void"
    assert stripe_invoice["auto_advance"] is False  # finalized quietly
    assert stripe_lines(fake_stripe, stripe_invoice["id"]) == our_lines(invoice)
    assert fake_stripe.emails_sent == {}  # never sent to the customer
    assert len(fake_stripe.requests_to("POST", r"/v1/invoices")) == 1
    assert reconcile.reconcile_with_stripe() == []


def test_void_before_any_delivery_attempt_never_reaches_stripe(draft_invoice, fake_stripe):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tasks.deliver_invoice, "delay_on_commit", lambda *args: None)
        invoices.finalize_invoice(invoice_id=draft_invoice.pk, now=LATER)
    invoices.void_invoice(invoice_id=draft_invoice.pk, reason="test customer", now=LATER)
    tasks.deliver_invoice.apply(args=[draft_invoice.pk])  # the finalization's queued task

    assert fake_stripe.requests == []
    assert not StripeInvoiceSync.objects.filter(invoice=draft_invoice).exists()


def test_void_of_an_invoice_paid_in_stripe_is_refused(draft_invoice, fake_stripe):
    invoice = finalize(draft_invoice)  # charge_automatically: paid at delivery
    assert StripeInvoiceSync.objects.get(invoice=invoice).stripe_status == "paid"

    with pytest.raises(invoices.TransitionNotAllowed, match="refund it there"):
        invoices.void_invoice(invoice_id=invoice.pk, reason="goodwill", now=LATER)
    assert Invoice.objects.get(pk=invoice.pk).status == "finalized"
    assert fake_stripe.requests_to("POST", r"/v1/invoices/.*/void") == []


def test_void_racing_a_payment_in_stripe_is_flagged(sent_invoice, fake_stripe):
    """The customer paid a moment ago and the webhook has not arrived: Stripe refuses the void;
    the delivery fails with the reason and reconcile shows it until a person resolves it."""
    stripe_id = sent_invoice.stripe_invoice_id
    fake_stripe.set_invoice_status(stripe_id, "paid")

    invoices.void_invoice(invoice_id=sent_invoice.pk, reason="goodwill", now=LATER)

    sync = StripeInvoiceSync.objects.get(invoice=sent_invoice)
    assert sync.status == "failed"
    assert "Stripe invoice" in sync.last_error and "is paid: refund it" in sync.last_error
    assert fake_stripe.requests_to("POST", r"/v1/invoices/.*/void") == []
    problems = reconcile.reconcile_with_stripe()
    assert any("delivery failed" in p for p in problems)
    assert any("Stripe status paid, ours void" in p for p in problems)


def test_void_push_retries_through_a_stripe_fault(sent_invoice, fake_stripe):
    fake_stripe.inject("500", path=r"/v1/invoices/.*/void")
    with pytest.raises(Retry):
        invoices.void_invoice(invoice_id=sent_invoice.pk, reason="wrong plan", now=LATER)
    assert StripeInvoiceSync.objects.get(invoice=sent_invoice).status == "pending"

    tasks.deliver_invoice.apply(args=[sent_invoice.pk])  # Celery's retry

    assert stripe_status_of(fake_stripe, sent_invoice) == "void"
    assert len(fake_stripe.requests_to("POST", r"/v1/invoices/.*/void")) == 2
    assert StripeInvoiceSync.objects.get(invoice=sent_invoice).status == "delivered"
    assert reconcile.reconcile_with_stripe() == []


def test_status_from_a_stripe_webhook_is_not_pushed_back(sent_invoice, fake_stripe, client):
    voided = fake_stripe.set_invoice_status(sent_invoice.stripe_invoice_id, "void")
    before = len(fake_stripe.requests)
    fake_stripe.deliver(client, fake_stripe.event("invoice.voided", voided))

    assert Invoice.objects.get(pk=sent_invoice.pk).status == "void"
    assert [r for r in fake_stripe.requests[before:] if r.method == "POST"] == []
    assert not AuditEntry.objects.filter(action="invoice.stripe_status_push").exists()
    assert reconcile.reconcile_with_stripe() == []


def test_the_local_backend_keeps_voids_local(draft_invoice, fake_stripe, settings):
    settings.BILLING_BACKEND = "local"
    invoices.finalize_invoice(invoice_id=draft_invoice.pk, now=LATER)
    invoices.void_invoice(invoice_id=draft_invoice.pk, reason="test", now=LATER + timedelta(1))
    assert fake_stripe.requests == []
