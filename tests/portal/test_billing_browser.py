"""The billing page in a real browser (Debian's Chromium through Playwright), with the Stripe
backend against the fake Stripe: a customer whose invoice awaits a payment method sees why,
presses "Add a payment method", is sent to Stripe Checkout (setup mode; the fake's hosted page
is played by a routed stub, the machine has no network), enters a card there, comes back, and
the invoice that waited is charged once Stripe's webhook has arrived."""

from __future__ import annotations

import os

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from invoicing.models import StripeCustomer, StripeInvoiceSync
from invoicing.services import invoices
from metering import services as metering_services
from tests.fake_stripe import fake_stripe, fake_stripe_server  # noqa: F401
from tests.portal.conftest import build_history, make_meters, make_portal_customer
from tests.portal.test_browser import browser, page, shot, sign_in, submit  # noqa: F401

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs("chromium"),
    pytest.mark.django_db(transaction=True),
]

CHECKOUT_PAGE = """<!doctype html><html lang="en"><head><meta name="viewport"
content="width=device-width"><title>Stripe Checkout (simulated)</title></head><body>
<h1>Set up a card</h1><p id="session">{session}</p></body></html>"""


def test_a_customer_adds_a_card_from_the_billing_page(page, live_server, fake_stripe, settings):  # noqa: F811
    settings.BILLING_BACKEND = "stripe"
    settings.STRIPE_COLLECTION_METHOD = "charge_automatically"
    settings.STRIPE_KEY_PREFIX = "browser"
    make_meters()
    key, _ = metering_services.create_api_key(name="agents")
    acme = make_portal_customer("acme", tz="America/New_York")
    draft = build_history(acme, key)
    invoices.mark_summary_sent(invoice_id=draft.pk, at=timezone.now())
    invoices.finalize_invoice(invoice_id=draft.pk, now=timezone.now())  # delivered on commit
    sync = StripeInvoiceSync.objects.get(invoice=draft)
    assert sync.status == "awaiting_method"
    draft.refresh_from_db()

    sign_in(page, acme.user.username)
    page.get_by_role("link", name="Billing", exact=True).click()
    expect(page.locator("#payment-method")).to_contain_text("No payment method yet")
    expect(page.locator(f'#awaiting li[data-invoice-id="{draft.pk}"]')).to_contain_text(
        draft.number
    )
    shot(page, "billing-awaiting")

    # The portal answers with a redirect to Stripe's hosted page. Playwright cannot route the
    # target of a redirect, so the stub stands in for the redirect's answer itself.
    sent_to: list[str] = []

    def to_checkout(route):
        answer = route.fetch(max_redirects=0)
        location = answer.headers.get("location", "")
        sent_to.append(location)
        route.fulfill(content_type="text/html", body=CHECKOUT_PAGE.format(session=location))

    page.route("**/portal/billing/payment-method/", to_checkout)
    submit(page, "Add a payment method")
    expect(page.locator("h1")).to_have_text("Set up a card")
    [location] = sent_to
    assert location.startswith("https://checkout.stripe.com/c/pay/cs_test_")
    [session] = fake_stripe.checkout_sessions.values()
    assert (
        session["customer"] == StripeCustomer.objects.get(customer=acme.customer).stripe_customer_id
    )

    # On Stripe's page the customer enters a card; Stripe sends the webhook and returns.
    completed = fake_stripe.complete_checkout(session["id"])
    event = fake_stripe.event("checkout.session.completed", completed)
    assert fake_stripe.deliver(live_server.url, event).status_code == 200
    page.goto(session["success_url"])
    expect(page.locator("#setup-done")).to_be_visible()
    expect(page.locator("#payment-method")).to_contain_text("A card is on file")
    expect(page.locator("#awaiting")).to_have_count(0)
    shot(page, "billing-card-on-file")

    [stripe_invoice] = fake_stripe.invoices_for(draft.pk)
    assert stripe_invoice["status"] == "paid"
    assert stripe_invoice["amount_paid"] == draft.total_minor
    assert StripeInvoiceSync.objects.get(invoice=draft).status == "delivered"
