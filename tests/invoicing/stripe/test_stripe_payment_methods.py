"""Payment methods: a customer without one gets a visible state, not a failed delivery; a card
added through Stripe Checkout (setup mode, simulated by the fake) becomes the customer's
default and the invoice that waited is charged; a decline is a payment failure with Stripe's
reason; an invoice below the minimum charge is recorded as carried, not paid."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from audit.models import AuditEntry
from invoicing.backends import get_backend
from invoicing.models import Invoice, StripeCustomer, StripeInvoiceSync, StripeWebhookEvent
from invoicing.stripe import payment_methods, reconcile
from invoicing.stripe_admin import stripe_delivery_status
from metering.models import PortalMembership
from tests.invoicing.stripe.conftest import finalize

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def no_card(stripe_backend):
    stripe_backend.cards_for_new_customers = False  # as Stripe creates customers
    return stripe_backend


def portal_client(customer):
    user = get_user_model().objects.create_user("ann", "ann@example.com", "pw-portal-123")
    PortalMembership.objects.create(user=user, customer=customer)
    web = Client()
    web.force_login(user)
    return web


def test_without_a_payment_method_the_invoice_awaits_one_visibly(draft_invoice, no_card):
    invoice = finalize(draft_invoice)
    [stripe_invoice] = no_card.invoices_for(invoice.pk)
    assert stripe_invoice["status"] == "open"  # finalized in Stripe, not charged
    assert no_card.requests_to("POST", r"/v1/invoices/.*/pay") == []  # Stripe would say 400
    sync = StripeInvoiceSync.objects.get(invoice=invoice)
    assert sync.status == "awaiting_method" and "no default payment method" in sync.last_error
    assert stripe_delivery_status(invoice).startswith("Awaiting payment method")
    assert invoice.status == "finalized"
    # the billing cycle reports it delivered, with the reason, not as a failed step
    delivery = get_backend().describe_delivery(invoice)
    assert delivery.delivered and "awaiting payment method" in delivery.detail
    assert reconcile.reconcile_with_stripe() == []  # a known state, not a difference

    page = portal_client(invoice.customer).get(reverse("portal:billing"))
    html = page.content.decode()
    assert page.status_code == 200 and "No payment method yet" in html
    assert f'data-invoice-id="{invoice.pk}"' in html and "not charged yet" in html


def test_a_card_added_through_checkout_is_made_default_and_the_waiting_invoice_charged(
    draft_invoice, no_card, client
):
    invoice = finalize(draft_invoice)
    web = portal_client(invoice.customer)
    answer = web.post(reverse("portal:add_payment_method"))
    assert answer.status_code == 302
    assert answer["Location"].startswith("https://checkout.stripe.com/c/pay/cs_test_")
    [session] = no_card.checkout_sessions.values()
    link = StripeCustomer.objects.get(customer=invoice.customer)
    assert (session["mode"], session["customer"]) == ("setup", link.stripe_customer_id)
    assert session["success_url"].endswith("/portal/billing/?setup=done")

    # the customer enters a card on Stripe's page; Stripe sends the webhooks
    completed = no_card.complete_checkout(session["id"])
    response = no_card.deliver(client, no_card.event("checkout.session.completed", completed))
    assert response.status_code == 200
    intent = no_card.setup_intents[completed["setup_intent"]]
    assert (
        no_card.deliver(client, no_card.event("setup_intent.succeeded", intent)).status_code == 200
    )

    customer = no_card.customers[link.stripe_customer_id]
    assert customer["invoice_settings"]["default_payment_method"] == intent["payment_method"]
    link.refresh_from_db()
    assert link.default_payment_method == intent["payment_method"]
    [stripe_invoice] = no_card.invoices_for(invoice.pk)
    assert (
        stripe_invoice["status"] == "paid" and stripe_invoice["amount_paid"] == invoice.total_minor
    )
    assert StripeInvoiceSync.objects.get(invoice=invoice).status == "delivered"
    assert len(no_card.requests_to("POST", r"/v1/invoices/.*/pay")) == 1  # charged once
    # both webhooks asked for the same default: one change in Stripe (same key, same params)
    updates = no_card.requests_to("POST", r"/v1/customers/cus_[^/]+")
    assert len({u.idempotency_key for u in updates}) == 1
    assert AuditEntry.objects.filter(action="customer.stripe_payment_method").count() == 1
    # the paid webhook settles ours
    paid = no_card.invoice_event("invoice.paid", stripe_invoice["id"])
    no_card.deliver(client, paid)
    assert Invoice.objects.get(pk=invoice.pk).status == "paid"
    assert reconcile.reconcile_with_stripe() == []
    html = web.get(reverse("portal:billing")).content.decode()
    assert intent["payment_method"] in html and "No payment method yet" not in html


def test_a_default_set_in_the_dashboard_resumes_the_waiting_invoice(draft_invoice, no_card, client):
    invoice = finalize(draft_invoice)
    link = StripeCustomer.objects.get(customer=invoice.customer)
    no_card.attach_card(link.stripe_customer_id)  # set by staff in Stripe's dashboard
    event = no_card.event("customer.updated", no_card.customers[link.stripe_customer_id])
    assert no_card.deliver(client, event).status_code == 200
    row = StripeWebhookEvent.objects.get(type="customer.updated")
    assert row.outcome == "applied" and "1 deliveries resumed" in row.detail
    [stripe_invoice] = no_card.invoices_for(invoice.pk)
    assert stripe_invoice["status"] == "paid"


def test_a_declined_card_is_a_payment_failure_with_stripes_reason(draft_invoice, no_card):
    no_card.cards_for_new_customers = False
    invoice_id = draft_invoice.pk
    from invoicing.stripe.customers import ensure_stripe_customer

    stripe_customer_id = ensure_stripe_customer(
        customer_id=draft_invoice.customer_id, now=draft_invoice.created_at
    )
    no_card.attach_card(stripe_customer_id, number="4000000000000002")  # Stripe's decline card
    invoice = finalize(Invoice.objects.get(pk=invoice_id))
    sync = StripeInvoiceSync.objects.get(invoice=invoice)
    assert sync.status == "delivered"  # delivered; the payment failed
    assert (
        "Your card was declined" in sync.payment_failure
        and "generic_decline" in sync.payment_failure
    )
    assert "payment failed: Your card was declined" in stripe_delivery_status(invoice)
    html = portal_client(invoice.customer).get(reverse("portal:billing")).content.decode()
    assert 'id="declined"' in html and "Your card was declined" in html


def test_below_the_minimum_charge_is_carried_not_paid(draft_invoice, stripe_backend, client):
    # 30 cents: Stripe marks it paid without a charge and carries it to the balance
    line = draft_invoice.lines.order_by("position").first()
    draft_invoice.lines.exclude(pk=line.pk).delete()
    line.amount_minor = 30
    line.save(update_fields=["amount_minor"])
    Invoice.objects.filter(pk=draft_invoice.pk).update(total_minor=30)
    invoice = finalize(Invoice.objects.get(pk=draft_invoice.pk))
    [stripe_invoice] = stripe_backend.invoices_for(invoice.pk)
    assert (stripe_invoice["status"], stripe_invoice["amount_paid"]) == ("paid", 0)
    sync = StripeInvoiceSync.objects.get(invoice=invoice)
    assert (sync.amount_due, sync.amount_paid, sync.ending_balance) == (30, 0, 30)
    assert stripe_backend.requests_to("POST", r"/v1/invoices/.*/pay") == []
    stripe_backend.deliver(
        client, stripe_backend.invoice_event("invoice.paid", stripe_invoice["id"])
    )
    invoice.refresh_from_db()
    assert invoice.status == "finalized"  # not paid: nothing was charged
    row = StripeWebhookEvent.objects.get(type="invoice.paid")
    assert row.outcome == "unchanged" and "carried to the customer's balance" in row.detail
    assert "carried to the customer's Stripe balance (30)" in stripe_delivery_status(invoice)
    assert payment_methods.billing_state(customer_id=invoice.customer_id).carried == [sync]
    assert reconcile.reconcile_with_stripe() == []
    # Stripe's balance changed behind our back: reconcile says so
    stripe_backend.set_customer_balance(stripe_invoice["customer"], 0)
    [problem] = reconcile.reconcile_with_stripe()
    assert re.search(r"Stripe balance 0 != 30 left by invoice in_", problem)


def test_finance_creates_a_card_link_in_the_admin(draft_invoice, no_card, admin_client):
    finalize(draft_invoice)
    link = StripeCustomer.objects.get(customer=draft_invoice.customer)
    response = admin_client.post(
        reverse("admin:invoicing_stripecustomer_changelist"),
        {"action": "card_link", "_selected_action": [link.pk]},
        follow=True,
    )
    html = response.content.decode()
    assert response.status_code == 200 and "https://checkout.stripe.com/c/pay/cs_test_" in html
    listing = admin_client.get(reverse("admin:invoicing_stripecustomer_changelist")).content
    assert b"none: invoices cannot be charged" in listing
