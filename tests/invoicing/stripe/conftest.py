"""Fixtures for the Stripe backend: the fake Stripe server, BILLING_BACKEND=stripe, a clock set
just after the first hourly period of the `subscribed` customer, and its closed invoice.

The tests run with real transactions (`transaction=True`): the backend refuses to call Stripe
inside one, and deliveries queued with delay_on_commit run when the finalization commits.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine

from invoicing.models import Invoice
from invoicing.services import closing, invoices
from tests.fake_stripe import fake_stripe, fake_stripe_server  # noqa: F401
from tests.invoicing.conftest import T0

H = timedelta(hours=1)
# Tests run at this instant (the clock ticks on from it), so Stripe's 35-day limit on meter
# event timestamps holds whatever today's date is.
NOW = T0 + 2 * H


@pytest.fixture(autouse=True)
def clock():
    with time_machine.travel(NOW, tick=True) as traveller:
        yield traveller


@pytest.fixture
def stripe_backend(settings, fake_stripe):  # noqa: F811
    settings.BILLING_BACKEND = "stripe"
    settings.STRIPE_COLLECTION_METHOD = "charge_automatically"
    settings.STRIPE_USAGE_REPORTING = "off"
    settings.STRIPE_KEY_PREFIX = "test"
    settings.BILLING_GRACE_PERIOD = 0
    settings.BILLING_REVIEW_PERIOD = 0
    # Customers with a card on file (the Checkout flow is tested on its own, test_stripe_
    # payment_methods); a customer without one awaits a payment method.
    fake_stripe.cards_for_new_customers = True
    return fake_stripe


def ev(event_id, meter, quantity, at, customer="acme"):
    event = {
        "event_id": event_id,
        "customer_id": customer,
        "meter": meter,
        "timestamp": at.isoformat(),
    }
    if quantity is not None:
        event["quantity"] = str(quantity)
    return event


def usage_events():
    at = T0 + timedelta(minutes=5)
    return [
        ev("t1", "agent_tasks", None, at),
        ev("t2", "agent_tasks", None, at + timedelta(minutes=1)),
        ev("t3", "agent_tasks", None, at + timedelta(minutes=2)),
        ev("k1", "llm_tokens", 900_000, at),
        ev("k2", "llm_tokens", "600000.5", at + timedelta(minutes=9)),
        ev("m1", "agent_minutes", "61", at),
    ]


@pytest.fixture
def draft_invoice(subscribed, record, stripe_backend):
    """The first hour's invoice, closed as a draft (minutes 500, tasks 15, tokens 2400), its
    usage summary sent (finalization waits for it)."""
    record(usage_events(), now=T0 + timedelta(minutes=20))
    closing.close_due_periods(now=T0 + H)
    invoice = Invoice.objects.get(period__start=T0)
    invoices.mark_summary_sent(invoice_id=invoice.pk, at=T0 + H)
    return invoice


@pytest.fixture
def open_invoice(draft_invoice, settings, fake_stripe):  # noqa: F811
    """Delivered with send_invoice, so the Stripe invoice stays open until we change it."""
    settings.STRIPE_COLLECTION_METHOD = "send_invoice"
    invoice = finalize(draft_invoice)
    assert fake_stripe.invoices[invoice.stripe_invoice_id]["status"] == "open"
    return invoice


def finalize(invoice):
    """Finalize (numbering, audit); the delivery task runs when that commits (eager Celery)."""
    invoices.finalize_invoice(invoice_id=invoice.pk, now=T0 + H + timedelta(minutes=1))
    invoice.refresh_from_db()
    return invoice


def our_lines(invoice):
    return {str(line.pk): line.amount_minor for line in invoice.lines.order_by("position")}


def stripe_lines(fake, stripe_invoice_id):
    return {
        item["metadata"]["line_id"]: item["amount"] for item in fake.items_of(stripe_invoice_id)
    }
