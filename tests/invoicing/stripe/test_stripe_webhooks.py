"""POST /webhooks/stripe: signatures verified, each event applied once, in Stripe's order even
when delivered out of it."""

from __future__ import annotations

import json
import time

import pytest

from audit.models import AuditEntry
from invoicing.models import Invoice, StripeInvoiceSync, StripeWebhookEvent

pytestmark = pytest.mark.django_db(transaction=True)


def state(invoice):
    invoice.refresh_from_db()
    return invoice.status, AuditEntry.objects.count(), StripeWebhookEvent.objects.count()


def test_paid_event_marks_ours_paid_with_audit(open_invoice, fake_stripe, client):
    paid = fake_stripe.set_invoice_status(open_invoice.stripe_invoice_id, "paid")
    event = fake_stripe.event("invoice.paid", paid)

    response = fake_stripe.deliver(client, event)

    assert response.status_code == 200
    assert response.json() == {"received": event["id"], "duplicate": False, "outcome": "applied"}
    invoice = Invoice.objects.get(pk=open_invoice.pk)
    assert invoice.status == "paid"
    assert invoice.paid_at.timestamp() == event["created"]
    transition = AuditEntry.objects.get(action="invoice.paid")
    assert transition.data["from"] == "finalized" and transition.actor == "system"
    trail = AuditEntry.objects.get(action="invoice.stripe_event")
    assert trail.data == {
        "event_id": event["id"],
        "type": "invoice.paid",
        "stripe_invoice_id": invoice.stripe_invoice_id,
        "stripe_status": "paid",
        "from": "finalized",
        "to": "paid",
        "outcome": "applied",
        "attempt_count": 0,
    }
    sync = StripeInvoiceSync.objects.get(invoice=invoice)
    assert (sync.stripe_status, int(sync.stripe_status_at.timestamp())) == (
        "paid",
        event["created"],
    )


def test_replayed_event_is_a_no_op(open_invoice, fake_stripe, client):
    paid = fake_stripe.set_invoice_status(open_invoice.stripe_invoice_id, "paid")
    event = fake_stripe.event("invoice.paid", paid)
    assert fake_stripe.deliver(client, event).status_code == 200
    before = state(open_invoice)

    response = fake_stripe.deliver(client, event)

    assert response.status_code == 200 and response.json()["duplicate"] is True
    assert state(open_invoice) == before
    assert StripeWebhookEvent.objects.filter(event_id=event["id"]).count() == 1


def test_paid_before_finalized_still_ends_paid(open_invoice, fake_stripe, client):
    stripe_id = open_invoice.stripe_invoice_id
    t = int(time.time())
    finalized = fake_stripe.invoice_event("invoice.finalized", stripe_id, created=t - 5)
    paid = fake_stripe.event(
        "invoice.paid", fake_stripe.set_invoice_status(stripe_id, "paid"), created=t
    )

    assert fake_stripe.deliver(client, paid).json()["outcome"] == "applied"
    assert fake_stripe.deliver(client, finalized).json()["outcome"] == "stale"

    invoice = Invoice.objects.get(pk=open_invoice.pk)
    assert invoice.status == "paid"
    sync = StripeInvoiceSync.objects.get(invoice=invoice)
    assert sync.stripe_status == "paid"  # the older event did not overwrite it


def test_an_older_status_never_moves_ours_backwards(open_invoice, fake_stripe, client):
    stripe_id = open_invoice.stripe_invoice_id
    t = int(time.time())
    written_off = fake_stripe.event(
        "invoice.marked_uncollectible",
        fake_stripe.set_invoice_status(stripe_id, "uncollectible"),
        created=t - 60,
    )
    paid = fake_stripe.event(
        "invoice.paid", fake_stripe.set_invoice_status(stripe_id, "paid"), created=t
    )

    fake_stripe.deliver(client, paid)
    response = fake_stripe.deliver(client, written_off)

    assert response.json()["outcome"] == "stale"
    assert Invoice.objects.get(pk=open_invoice.pk).status == "paid"
    row = StripeWebhookEvent.objects.get(event_id=written_off["id"])
    assert "ours is paid already" in row.detail


def test_in_order_uncollectible_then_paid(open_invoice, fake_stripe, client):
    stripe_id = open_invoice.stripe_invoice_id
    fake_stripe.deliver(
        client,
        fake_stripe.event(
            "invoice.marked_uncollectible",
            fake_stripe.set_invoice_status(stripe_id, "uncollectible"),
        ),
    )
    assert Invoice.objects.get(pk=open_invoice.pk).status == "uncollectible"
    fake_stripe.deliver(
        client, fake_stripe.event("invoice.paid", fake_stripe.set_invoice_status(stripe_id, "paid"))
    )
    assert Invoice.objects.get(pk=open_invoice.pk).status == "paid"


def test_voided_in_stripe_voids_ours_with_a_reason(open_invoice, fake_stripe, client):
    voided = fake_stripe.set_invoice_status(open_invoice.stripe_invoice_id, "void")
    fake_stripe.deliver(client, fake_stripe.event("invoice.voided", voided))
    invoice = Invoice.objects.get(pk=open_invoice.pk)
    assert (invoice.status, invoice.void_reason) == ("void", "voided in Stripe")
    assert AuditEntry.objects.get(action="invoice.void").data["reason"] == "voided in Stripe"


def test_payment_failed_is_recorded_and_changes_nothing(open_invoice, fake_stripe, client):
    snapshot = fake_stripe.invoices[open_invoice.stripe_invoice_id] | {"attempt_count": 1}
    event = fake_stripe.event("invoice.payment_failed", fake_stripe._invoice_view(snapshot))
    response = fake_stripe.deliver(client, event)
    assert response.json()["outcome"] == "unchanged"
    assert Invoice.objects.get(pk=open_invoice.pk).status == "finalized"
    trail = AuditEntry.objects.get(action="invoice.stripe_event")
    assert (trail.data["type"], trail.data["attempt_count"]) == ("invoice.payment_failed", 1)


@pytest.mark.parametrize("how", ["wrong secret", "tampered body", "no header", "stale timestamp"])
def test_bad_or_stale_signature_is_refused_and_changes_nothing(
    open_invoice, fake_stripe, client, how
):
    event = fake_stripe.event(
        "invoice.paid", fake_stripe.set_invoice_status(open_invoice.stripe_invoice_id, "paid")
    )
    payload = json.dumps(event).encode()
    now = int(time.time())
    signature = {
        "wrong secret": fake_stripe.sign(payload, secret="whsec_someone_else"),
        "tampered body": fake_stripe.sign(payload.replace(b'"paid"', b'"open"', 1)),
        "no header": "",
        "stale timestamp": fake_stripe.sign(payload, timestamp=now - 600),
    }[how]
    before = state(open_invoice)

    response = client.post(
        "/webhooks/stripe",
        data=payload,
        content_type="application/json",
        **({"HTTP_STRIPE_SIGNATURE": signature} if signature else {}),
    )

    assert response.status_code == 400
    assert state(open_invoice) == before
    assert StripeWebhookEvent.objects.count() == 0


def test_not_our_invoice_or_not_an_invoice_event_is_acknowledged(fake_stripe, client):
    foreign = fake_stripe.event(
        "invoice.paid", {"id": "in_elsewhere", "object": "invoice", "status": "paid"}
    )
    other = fake_stripe.event("customer.updated", {"id": "cus_x", "object": "customer"})
    assert fake_stripe.deliver(client, foreign).json()["outcome"] == "ignored"
    assert fake_stripe.deliver(client, other).json()["outcome"] == "ignored"
    assert StripeWebhookEvent.objects.count() == 2


def test_webhook_needs_no_csrf_token_and_only_takes_post(fake_stripe):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    event = fake_stripe.event("customer.updated", {"id": "cus_x", "object": "customer"})
    assert fake_stripe.deliver(strict, event).status_code == 200
    assert strict.get("/webhooks/stripe").status_code == 405
