"""Meter events as Stripe documents them: timestamps within 35 days for the whole retry
horizon, or flagged; thin v2 events (meter error reports) accepted at the webhook."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from billing_cycle import tasks as cycle_tasks
from invoicing.models import StripeWebhookEvent, UsageReport
from invoicing.stripe import outbox, usage_reports
from tests.invoicing.conftest import T0
from tests.invoicing.stripe.conftest import usage_events
from tests.invoicing.stripe.test_stripe_usage import mapped  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_new_reports_timestamp_stays_valid_for_every_retry():
    # oldest timestamp given + the whole resend window + a margin < Stripe's 35 days
    horizon = usage_reports.METER_EVENT_MAX_AGE + outbox.RESEND_WINDOW
    assert horizon < usage_reports.STRIPE_METER_EVENT_AGE - usage_reports.SEND_MARGIN
    now = timezone.now()
    old = now - timedelta(days=60)
    assert usage_reports._meter_event_time(old, now) == now - usage_reports.METER_EVENT_MAX_AGE


def test_a_report_whose_timestamp_stripe_would_refuse_is_flagged_not_sent(
    subscribed,
    record,
    mapped,  # noqa: F811
    settings,
    clock,
):
    settings.STRIPE_USAGE_REPORTING = "close"
    record(usage_events(), now=T0 + timedelta(minutes=20))

    with pytest.MonkeyPatch.context() as patch:  # the reports are written, their sends lost
        patch.setattr(usage_reports, "_queue_sends", lambda ids: None)
        cycle_tasks.run_billing_cycle.apply()
    assert UsageReport.objects.exclude(value=0).count() == 3
    clock.shift(timedelta(days=36))  # the worker was down for weeks
    pending = list(UsageReport.objects.filter(status="pending").values_list("pk", flat=True))
    for report_id in pending:
        usage_reports.send_usage_report(report_id=report_id)
    flagged = UsageReport.objects.exclude(value=0)
    assert set(flagged.values_list("status", flat=True)) == {"needs_attention"}
    assert all("older than Stripe's 35 days" in r.last_error for r in flagged)
    assert mapped.requests_to("POST", "/v1/billing/meter_events") == []


def thin_event(type_="v1.billing.meter.error_report_triggered"):
    return {
        "id": "evt_test_65R9Ijk8Z4",
        "object": "v2.core.event",
        "type": type_,
        "created": timezone.now().isoformat().replace("+00:00", "Z"),
        "livemode": False,
        "context": None,
        "related_object": {
            "id": "mtr_test_61R9",
            "type": "billing.meter",
            "url": "/v1/billing/meters/mtr_test_61R9",
        },
        "reason": None,
    }


def test_a_thin_meter_error_event_is_accepted_stored_and_shown(client, fake_stripe):
    event = thin_event()
    response = fake_stripe.deliver(client, event)
    assert response.status_code == 200
    row = StripeWebhookEvent.objects.get(event_id=event["id"])
    assert (row.type, row.outcome, row.stripe_object_id) == (
        "v1.billing.meter.error_report_triggered",
        "applied",
        "mtr_test_61R9",
    )
    assert "errors in meter events of meter mtr_test_61R9" in row.detail
    assert row.payload == json.loads(json.dumps(event))
    again = fake_stripe.deliver(client, event)  # a redelivery changes nothing
    assert again.status_code == 200 and StripeWebhookEvent.objects.count() == 1


def test_a_thin_event_with_a_bad_time_is_refused(client, fake_stripe):
    event = thin_event() | {"created": "yesterday"}
    assert fake_stripe.deliver(client, event).status_code == 400
    assert StripeWebhookEvent.objects.count() == 0
