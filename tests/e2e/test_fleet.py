"""The whole story with real processes: an agent fleet posts usage to gunicorn, beat closes the
period, the worker mails the summaries and, after the review period, finalizes the invoices and
pushes them to Stripe; Stripe's signed `invoice.paid` webhooks settle them; reconcile is clean."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from invoicing.models import BillingPeriod, Invoice, StripeInvoiceSync
from notifications.models import Notification
from tests.e2e.fleet import run_fleet
from tests.e2e.invariants import assert_invariants
from tests.e2e.processes import wait_for
from tests.e2e.stack import GRACE, REVIEW, hourly_plan, subscribe

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.needs("redis-server"),
]
CUSTOMERS = 4


def test_fleet_usage_is_closed_mailed_invoiced_in_stripe_and_paid(stack, service_key, tmp_path):
    """A fleet of 4 agents (3 on the agent client, 1 on raw HTTP re-sending every batch) posts
    usage for 4 customers on an hourly plan whose period ends seconds later; beat closes it,
    one usage summary per customer arrives by SMTP (and budget alerts for the capped one),
    the invoices are finalized after the review period and delivered to the fake Stripe,
    signed `invoice.paid` webhooks (each sent twice) mark them paid, and `manage.py reconcile`
    exits 0."""
    url = stack.start_web()
    stack.start_worker()
    stack.start_beat()
    plan = hourly_plan()
    end = timezone.now().replace(microsecond=0) + timedelta(seconds=15)
    customers = subscribe(
        count=CUSTOMERS,
        plan=plan,
        anchor=end - timedelta(hours=1),  # the current hourly period ends at `end`
        prefix="fleet",
    )
    ids = [c.external_id for c in customers]
    # One customer has a budget cap (through the API): its alerts are mailed too.
    budget = requests.put(
        f"{url}/api/v1/customers/{ids[0]}/budget",
        json={"cap_minor": 600, "thresholds": [50, 80, 100], "action": "alert"},
        headers={"Authorization": f"Bearer {service_key[1]}"},
        timeout=10,
    )
    assert budget.status_code == 200, budget.text

    latest = end - timedelta(seconds=1)
    report = run_fleet(
        url=url,
        key=service_key[1],
        customers=ids,
        spool_dir=tmp_path,
        agents=4,
        tasks_per_agent=24,
        timestamp=lambda rng: min(timezone.now(), latest),
    )
    assert report.errors == []
    assert report.ledger.resends > 0
    assert timezone.now() < end + timedelta(seconds=GRACE), "the fleet was not done in time"

    # Beat: the period closes after its grace period, one draft per customer.
    periods = BillingPeriod.objects.filter(customer__external_id__in=ids, end=end)
    wait_for(
        lambda: periods.filter(status=BillingPeriod.Status.CLOSED).count() == CUSTOMERS,
        timeout=GRACE + 40,
        what="beat to close the period of every customer",
    )
    # The summaries go out, then after the review period the invoices are finalized and
    # delivered to Stripe (charged at once: charge_automatically).
    delivered = StripeInvoiceSync.objects.filter(status=StripeInvoiceSync.Status.DELIVERED)
    wait_for(
        lambda: delivered.count() == CUSTOMERS,
        timeout=REVIEW + 60,
        what="every invoice to be finalized and delivered to Stripe",
    )
    summaries = Notification.objects.filter(kind=Notification.Kind.USAGE_SUMMARY)
    assert summaries.count() == CUSTOMERS
    for invoice in Invoice.objects.all():
        assert invoice.summary_sent_at is not None
        assert invoice.finalized_at >= invoice.summary_sent_at + timedelta(seconds=REVIEW)
    assert Notification.objects.filter(kind=Notification.Kind.BUDGET_ALERT).exists()
    wait_for(
        lambda: len(stack.mail.snapshot()) == Notification.objects.count(),
        timeout=30,
        what="every notification's e-mail",
    )
    recipients = sorted(m["To"] for m in stack.mail.snapshot() if "usage" in m["Subject"])
    assert recipients == sorted(f"billing@{i}.example" for i in ids)

    # Stripe's signed webhooks come back to gunicorn: each invoice paid, a replay changes nothing.
    for invoice in Invoice.objects.all():
        event = stack.stripe.invoice_event("invoice.paid", invoice.stripe_invoice_id)
        first = stack.stripe.deliver(url, event)
        again = stack.stripe.deliver(url, event)
        assert (first.status_code, first.json()["duplicate"]) == (200, False)
        assert (again.status_code, again.json()["duplicate"]) == (200, True)
    assert set(Invoice.objects.values_list("status", flat=True)) == {Invoice.Status.PAID}

    assert_invariants(stack, report.ledger, due_before=end)
