"""The Stripe story end to end, with gunicorn, a Celery worker and beat against the strict fake
Stripe: three customers' billing cycles, one customer with a card, one without, and a 500 that
Stripe saves under its idempotency key on the way.

- The customer with a card is charged at delivery.
- The customer without one gets a visible state (awaiting payment method, on the portal's
  billing page), not a failed delivery; it adds a card through the Checkout flow (setup mode,
  simulated by the fake), Stripe's webhook reaches gunicorn, the worker makes the card the
  default, and the waiting invoices are charged.
- The saved 500 (replayed by Stripe under its key) is recovered under a new attempt key after a
  lookup: no duplicate invoice.
Then the promises of every scenario hold (tests/e2e/invariants.py), reconcile included.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from invoicing.models import StripeInvoiceSync
from metering.models import Customer, PortalMembership
from tests.e2e.invariants import assert_invariants
from tests.e2e.processes import wait_for
from tests.e2e.stack import past_usage

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.needs("redis-server"),
]
S = StripeInvoiceSync.Status


def test_card_no_card_and_a_saved_500(stack, service_key, settings):
    fake = stack.stripe
    # This process serves the portal page below as the web processes would.
    settings.BILLING_BACKEND = "stripe"
    settings.STRIPE_API_BASE = fake.url
    settings.STRIPE_API_KEY = fake.api_key
    settings.STRIPE_KEY_PREFIX = "e2e"
    fake.no_card_for = {"story-1"}  # story-0 and story-2 added a card before
    stack.start_web()
    ledger, due_before = past_usage(
        api_key=service_key[0], customers=3, per_period=2, prefix="story"
    )
    fake.inject("500", path=r"/v1/invoices")  # saved by Stripe: replayed under its key
    stack.start_worker()
    stack.start_beat()

    syncs = StripeInvoiceSync.objects.all()
    wait_for(
        lambda: (
            syncs.filter(status=S.DELIVERED).count() == 4
            and syncs.filter(status=S.AWAITING_PAYMENT_METHOD).count() == 2
        ),
        timeout=150,
        what="4 invoices charged and 2 awaiting a payment method",
    )
    [faulted] = [r for r in fake.requests if r.fault == "500"]
    under_key = [r for r in fake.requests if r.idempotency_key == faulted.idempotency_key]
    assert under_key == [faulted]  # never resent under the key whose 500 Stripe keeps
    waiting = Customer.objects.get(external_id="story-1")
    assert {s.invoice.customer_id for s in syncs.filter(status=S.AWAITING_PAYMENT_METHOD)} == {
        waiting.pk
    }
    assert fake.requests_to("POST", r"/v1/invoices/[^/]+/pay")  # the others were charged

    # The customer sees why, and adds a card through Stripe Checkout.
    user = get_user_model().objects.create_user("story", "story@example.com", "pw-story-123")
    PortalMembership.objects.create(user=user, customer=waiting)
    portal = Client()
    portal.force_login(user)
    page = portal.get(reverse("portal:billing")).content.decode()
    assert "No payment method yet" in page and 'id="awaiting"' in page
    checkout = portal.post(reverse("portal:add_payment_method"))
    assert checkout.status_code == 302 and "checkout.stripe.com" in checkout["Location"]
    [session] = fake.checkout_sessions.values()
    completed = fake.complete_checkout(session["id"])
    answer = fake.deliver(stack.web_url, fake.event("checkout.session.completed", completed))
    assert answer.status_code == 200, answer.text

    wait_for(
        lambda: syncs.filter(status=S.DELIVERED).count() == 6,
        timeout=90,
        what="the waiting invoices charged once the card arrived",
    )
    stripe_customer = fake.customers[waiting.stripe_link.stripe_customer_id]
    assert stripe_customer["invoice_settings"]["default_payment_method"]
    for sync in syncs:
        [theirs] = fake.invoices_for(sync.invoice_id)
        assert theirs["status"] == "paid" and theirs["amount_paid"] == sync.invoice.total_minor
    assert not [r for r in fake.requests if r.status == 400]  # nothing refused by Stripe
    stack.settle_in_stripe()
    assert_invariants(stack, ledger, due_before=due_before)
