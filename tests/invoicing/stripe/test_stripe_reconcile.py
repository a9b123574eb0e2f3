"""Reconcile compares our invoices and usage reports with what Stripe holds."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from invoicing.models import StripeCustomer, StripeMeterMapping
from invoicing.services.reconcile import reconcile
from invoicing.stripe import reconcile as stripe_reconcile
from invoicing.stripe import usage_reports, webhooks
from tests.invoicing.conftest import T0
from tests.invoicing.stripe.conftest import H, finalize

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def delivered(draft_invoice, fake_stripe, settings, meters):
    """The invoice in Stripe, paid there and here (webhook), and its usage reported."""
    settings.STRIPE_USAGE_REPORTING = "close"
    for code, meter in meters.items():
        fake_stripe.create_meter(f"{code}_evt")
        StripeMeterMapping.objects.create(
            meter=meter, event_name=f"{code}_evt", reporting_from=T0 - H
        )
    usage_reports.report_usage(now=T0 + 2 * H)  # the close's follow-up task
    invoice = finalize(draft_invoice)
    paid = fake_stripe.invoices_for(invoice.pk)[0]
    webhooks.apply_stripe_event(event=fake_stripe.event("invoice.paid", paid), now=T0 + 2 * H)
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    return invoice


def test_clean_books_reconcile_and_the_command_exits_zero(delivered, capsys):
    assert reconcile() == []
    call_command("reconcile")
    assert "OK" in capsys.readouterr().out


def test_changed_item_amount_in_stripe_is_found(delivered, fake_stripe):
    line = delivered.lines.get(meter__code="agent_tasks")
    fake_stripe.set_item_amount(line.stripe_invoice_item_id, 16)

    problems = stripe_reconcile.reconcile_with_stripe()

    label = f"stripe: invoice {delivered.number}"
    assert problems == [
        f"{label}: Stripe total 2916 != ours 2915",
        f"{label}: line {line.pk} amount 15 != Stripe item {line.stripe_invoice_item_id} amount 16",
    ]
    with pytest.raises(CommandError, match="2 difference"):
        call_command("reconcile")


def test_status_difference_and_a_duplicate_invoice_are_found(delivered, fake_stripe):
    stripe_id = delivered.stripe_invoice_id
    fake_stripe.set_invoice_status(stripe_id, "void")
    copy = fake_stripe.create_invoice(
        {
            "customer": fake_stripe.invoices[stripe_id]["customer"],
            "metadata": {"invoice_id": str(delivered.pk)},
        }
    )
    problems = stripe_reconcile.reconcile_with_stripe()
    label = f"stripe: invoice {delivered.number}"
    assert problems == [
        f"{label}: 2 Stripe invoices carry its id: {', '.join(sorted([stripe_id, copy['id']]))}",
        f"{label}: Stripe status void, ours paid",
    ]


def test_usage_difference_with_meter_summaries_is_found(delivered, fake_stripe):
    stripe_customer = StripeCustomer.objects.get(customer=delivered.customer).stripe_customer_id
    [tokens] = [e for e in fake_stripe.meter_events if e["event_name"] == "llm_tokens_evt"]
    tokens["payload"]["value"] = "1499999"

    problems = stripe_reconcile.reconcile_with_stripe()

    assert problems == [
        "stripe: usage of acme on llm_tokens_evt: reported 1500000, Stripe's summaries say 1499999"
    ]
    assert fake_stripe.meter_total("llm_tokens_evt", stripe_customer) == Decimal(1499999)


def test_stripe_unreachable_is_a_difference(delivered, settings):
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens there
    [problem] = stripe_reconcile.reconcile_with_stripe()
    assert problem.startswith("stripe: could not compare with Stripe: ")


def test_local_backend_reconciles_nothing_with_stripe(draft_invoice, settings):
    settings.BILLING_BACKEND = "local"
    finalize_at = T0 + H + timedelta(minutes=1)
    from invoicing.services import invoices

    invoices.finalize_invoice(invoice_id=draft_invoice.pk, now=finalize_at)
    assert reconcile() == []
