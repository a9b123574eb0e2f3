"""The Stripe back office: dashboard links, the outbox and deliveries, retry actions audited
with the user. (invoicing/admin.py imports invoicing.stripe_admin; imported here too so the
pages exist whatever the import order.)"""

from __future__ import annotations

import pytest
from django.urls import reverse

import invoicing.stripe_admin as stripe_admin
from audit.models import AuditEntry
from invoicing.models import StripeCustomer, StripeInvoiceSync, UsageReport
from invoicing.stripe import customers
from tests.invoicing.stripe.conftest import finalize

pytestmark = pytest.mark.django_db(transaction=True)


def test_links_point_to_the_stripe_test_dashboard(draft_invoice, fake_stripe):
    invoice = finalize(draft_invoice)
    link = stripe_admin.stripe_invoice_link(invoice)
    assert f"https://dashboard.stripe.com/test/invoices/{invoice.stripe_invoice_id}" in link
    line = invoice.lines.select_related("invoice").first()
    assert line.stripe_invoice_item_id in stripe_admin.stripe_item_link(line)
    assert stripe_admin.stripe_delivery_status(invoice) == "Delivered (paid in Stripe)"


def test_retry_action_redelivers_a_failed_invoice_and_audits_the_user(
    draft_invoice, fake_stripe, admin_client, admin_user
):
    customers.link_stripe_customer(
        customer_id=draft_invoice.customer_id, stripe_customer_id="cus_gone"
    )
    invoice = finalize(draft_invoice)
    sync = StripeInvoiceSync.objects.get(invoice=invoice)
    assert sync.status == "failed"
    customer = fake_stripe.create_customer({"name": "Acme Corp"})
    response = admin_client.post(
        reverse(
            "admin:invoicing_stripecustomer_change", args=[sync.invoice.customer.stripe_link.pk]
        ),
        {"customer": invoice.customer_id, "stripe_customer_id": customer["id"]},
    )
    assert response.status_code == 302
    linked = AuditEntry.objects.filter(action="customer.stripe_linked").latest("id")
    assert (
        linked.actor == admin_user.username and linked.data["stripe_customer_id"] == customer["id"]
    )

    response = admin_client.post(
        reverse("admin:invoicing_stripeinvoicesync_changelist"),
        {"action": "retry", "_selected_action": [sync.pk]},
    )

    assert response.status_code == 302
    assert StripeInvoiceSync.objects.get(pk=sync.pk).status == "delivered"
    [stripe_invoice] = fake_stripe.invoices_for(invoice.pk)
    assert stripe_invoice["customer"] == customer["id"]
    retried = AuditEntry.objects.get(action="invoice.stripe_retried")
    assert retried.actor == admin_user.username and retried.data["from"] == "failed"


def test_outbox_pages_render(draft_invoice, fake_stripe, admin_client):
    finalize(draft_invoice)
    for name in [
        "stripecustomer",
        "stripemetermapping",
        "stripeinvoicesync",
        "usagereport",
        "stripewebhookevent",
    ]:
        response = admin_client.get(reverse(f"admin:invoicing_{name}_changelist"))
        assert response.status_code == 200, name
    assert StripeCustomer.objects.count() == 1 and UsageReport.objects.count() == 0
