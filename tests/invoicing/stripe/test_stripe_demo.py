"""The issue's "done when": with BILLING_BACKEND=stripe pointed at the fake server, a demo
customer's period closes, the Stripe invoice's lines equal ours one to one, a signed
`invoice.paid` webhook (over HTTP) marks ours paid, and `reconcile` exits 0."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from billing_cycle import tasks as cycle_tasks
from invoicing.models import BillingPeriod, Invoice
from invoicing.services import invoices
from tests.invoicing.stripe.conftest import our_lines, stripe_lines

pytestmark = pytest.mark.django_db(transaction=True)


def test_demo_period_closes_into_stripe_and_a_paid_webhook_settles_it(
    live_server, fake_stripe, settings, tmp_path, clock
):
    settings.BILLING_BACKEND = "stripe"
    settings.STRIPE_KEY_PREFIX = "demo"
    settings.BILLING_GRACE_PERIOD = 0
    settings.BILLING_REVIEW_PERIOD = 0
    fake_stripe.cards_for_new_customers = True  # the demo customers added a card already
    # seed_demo joins the Finance group a migration creates; a transactional test before this
    # one may have flushed it.
    Group.objects.get_or_create(name="Finance")
    out = io.StringIO()
    call_command("seed_demo", key_file=str(tmp_path / "demo-key"), stdout=out)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {out.getvalue().strip().splitlines()[-1]}")
    period = BillingPeriod.objects.get(customer__external_id="acme", status="open")
    at = max(period.start, timezone.now() - timedelta(minutes=1))
    events = [
        {"event_id": "d1", "customer_id": "acme", "meter": "agent_tasks", "timestamp": at},
        {"event_id": "d2", "customer_id": "acme", "meter": "agent_tasks", "timestamp": at},
        {
            "event_id": "d3",
            "customer_id": "acme",
            "meter": "llm_tokens",
            "quantity": "250000",
            "timestamp": at,
            "properties": {"model": "large", "token_type": "output"},  # the demo's rate card
        },
    ]
    for event in events:
        event["timestamp"] = event["timestamp"].isoformat()
    assert api.post("/api/v1/events", {"events": events}, format="json").status_code == 202

    clock.move_to(period.end + timedelta(minutes=1))
    cycle_tasks.run_billing_cycle.apply()  # the beat task: closes the hour
    invoice = Invoice.objects.get(period=period)
    invoices.mark_summary_sent(invoice_id=invoice.pk, at=timezone.now())
    cycle_tasks.run_billing_cycle.apply()  # finalizes it: delivered to Stripe after the commit

    invoice.refresh_from_db()
    [stripe_invoice] = fake_stripe.invoices_for(invoice.pk)
    assert invoice.status == "finalized" and invoice.stripe_invoice_id == stripe_invoice["id"]
    assert stripe_lines(fake_stripe, stripe_invoice["id"]) == our_lines(invoice)
    assert stripe_invoice["total"] == invoice.total_minor > 0

    paid = fake_stripe.event("invoice.paid", fake_stripe.invoices_for(invoice.pk)[0])
    response = fake_stripe.deliver(live_server.url, paid)
    assert response.status_code == 200
    invoice.refresh_from_db()
    assert invoice.status == "paid"

    call_command("reconcile", stdout=io.StringIO())  # raises CommandError on any difference
