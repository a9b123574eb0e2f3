"""Usage reporting through Billing Meters: an outbox row per report written before sending,
identifiers derived from it, each event's usage reported once (at close, or realtime)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from celery.exceptions import Retry
from django.utils import timezone

from audit.models import AuditEntry
from billing_cycle import tasks as cycle_tasks
from invoicing import tasks
from invoicing.models import StripeCustomer, StripeMeterMapping, UsageReport
from invoicing.services import closing
from invoicing.stripe import outbox, reconcile, usage_reports
from invoicing.stripe.usage_reports import report_identifier
from metering.models import UsageAggregate, UsageEvent
from tests.invoicing.conftest import T0
from tests.invoicing.stripe.conftest import H, ev, usage_events

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def mapped(meters, fake_stripe, settings):
    """Each demo meter mapped to a Stripe meter `<code>_evt` (reporting from before T0)."""
    settings.STRIPE_KEY_PREFIX = "test"
    settings.STRIPE_REALTIME_SETTLE = 0
    settings.BILLING_GRACE_PERIOD = 0
    for code, meter in meters.items():
        fake_stripe.create_meter(f"{code}_evt")
        StripeMeterMapping.objects.create(
            meter=meter, event_name=f"{code}_evt", reporting_from=T0 - H
        )
    return fake_stripe


def totals(fake, customer):
    stripe_id = StripeCustomer.objects.get(customer=customer).stripe_customer_id
    return {
        name: fake.meter_total(f"{name}_evt", stripe_id)
        for name in ("agent_minutes", "agent_tasks", "llm_tokens")
    }


def drain():
    """Run the send task for every pending report until none is left (Celery's retries)."""
    for _ in range(10):
        pending = list(UsageReport.objects.filter(status="pending").values_list("pk", flat=True))
        if not pending:
            return
        for report_id in pending:
            try:
                tasks.stripe_send_usage_report.apply(args=[report_id])
            except Retry:
                pass
    raise AssertionError("reports still pending")


def test_close_reports_each_aggregate_once(subscribed, record, mapped, settings):
    settings.STRIPE_USAGE_REPORTING = "close"
    record(usage_events(), now=T0 + timedelta(minutes=20))

    cycle_tasks.run_billing_cycle.apply()  # closes two hours; the reports follow the commit

    assert UsageReport.objects.count() == UsageAggregate.objects.count() == 6
    assert set(UsageReport.objects.values_list("status", flat=True)) == {"sent"}
    assert totals(mapped, subscribed) == {
        "agent_minutes": Decimal(61),
        "agent_tasks": Decimal(3),
        "llm_tokens": Decimal(1500000),  # 1,500,000.5: the half carries to a later report
    }
    tokens = UsageReport.objects.filter(meter__code="llm_tokens").order_by("pk")
    assert [(r.quantity, r.cumulative_quantity, r.value) for r in tokens] == [
        (Decimal("1500000.5"), Decimal("1500000.5"), 1500000),
        (Decimal(0), Decimal("1500000.5"), 0),  # the empty second hour: nothing sent
    ]
    first = tokens[0]
    [event] = [e for e in mapped.meter_events if e["identifier"] == f"test-usage-{first.pk}"]
    assert event["timestamp"] == int((T0 + H).timestamp()) - 1  # within the period
    assert event["payload"]["value"] == "1500000"
    assert len(mapped.meter_events) == UsageReport.objects.exclude(value=0).count() == 3

    # again, and the catch-up of the resume task: nothing new
    tasks.stripe_report_usage.apply()
    usage_reports.resume_usage_reports(now=timezone.now() + timedelta(hours=1))
    assert UsageReport.objects.count() == 6 and len(mapped.meter_events) == 3


def test_a_send_whose_answer_was_lost_is_resent_under_its_key_and_counted_once(
    subscribed, record, mapped, settings, monkeypatch
):
    settings.STRIPE_USAGE_REPORTING = "close"
    record(usage_events(), now=T0 + timedelta(minutes=20))
    original = usage_reports._record_report_sent

    def crash(**kwargs):
        raise RuntimeError("worker killed before the commit")

    monkeypatch.setattr(usage_reports, "_record_report_sent", crash)
    cycle_tasks.run_billing_cycle.apply()  # each send crashes after Stripe took it (logged)
    monkeypatch.setattr(usage_reports, "_record_report_sent", original)
    assert len(mapped.meter_events) == 3

    drain()

    for report in UsageReport.objects.exclude(value=0):
        assert report.status == "sent" and report.sent_params["identifier"] == report_identifier(
            report
        )
        sends = [
            r
            for r in mapped.requests_to("POST", "/v1/billing/meter_events")
            if r.params["identifier"] == report_identifier(report)
        ]
        # the same parameters under the same key: Stripe replays its first answer
        assert [(r.status, r.replayed) for r in sends] == [(200, False), (200, True)]
        assert sends[0].idempotency_key == sends[1].idempotency_key
        assert sends[0].params == sends[1].params
        assert int(sends[0].params["timestamp"]) == report.sent_params["timestamp"]
    assert len(mapped.meter_events) == 3
    assert totals(mapped, subscribed)["llm_tokens"] == Decimal(1500000)


def test_a_refused_resend_is_flagged_never_read_as_delivered(
    subscribed, record, mapped, settings, monkeypatch
):
    settings.STRIPE_USAGE_REPORTING = "close"
    record(usage_events(), now=T0 + timedelta(minutes=20))
    original = usage_reports._record_report_sent

    def crash(**kwargs):
        raise RuntimeError("worker killed before the commit")

    monkeypatch.setattr(usage_reports, "_record_report_sent", crash)
    cycle_tasks.run_billing_cycle.apply()  # each send crashes after Stripe took it (logged)
    monkeypatch.setattr(usage_reports, "_record_report_sent", original)
    sent_but_unknown = [e["identifier"] for e in mapped.meter_events]
    assert len(sent_but_unknown) == 3
    assert UsageReport.objects.exclude(value=0).filter(status="pending").count() == 3
    mapped.forget_idempotency_keys(meter_identifiers=False)  # only the identifiers hold

    drain()

    for report in UsageReport.objects.exclude(value=0):
        # Stripe's refusal of the repeated identifier is not matched as text: the report is
        # flagged for finance staff, who check Stripe and mark it delivered.
        assert report.status == "needs_attention"
        assert "may have delivered" in report.last_error
        statuses = [
            r.status
            for r in mapped.requests_to("POST", "/v1/billing/meter_events")
            if r.params["identifier"] == report_identifier(report)
        ]
        assert statuses == [200, 400]
    assert len(mapped.meter_events) == 3  # never counted twice
    assert totals(mapped, subscribed)["llm_tokens"] == Decimal(1500000)


@pytest.mark.parametrize("kind", ["500", "429", "timeout", "reset"])
def test_meter_event_fault_then_retry_reports_once(subscribed, record, mapped, settings, kind):
    settings.STRIPE_USAGE_REPORTING = "close"
    record(usage_events(), now=T0 + timedelta(minutes=20))
    mapped.inject(kind, path="/v1/billing/meter_events", delay=1.0)

    cycle_tasks.run_billing_cycle.apply()  # one send fails and asks Celery to retry it
    assert UsageReport.objects.filter(status="pending").count() == 1
    drain()

    assert len(mapped.meter_events) == 3  # one per report with a value, no duplicate
    assert len({e["identifier"] for e in mapped.meter_events}) == 3
    assert totals(mapped, subscribed) == {
        "agent_minutes": Decimal(61),
        "agent_tasks": Decimal(3),
        "llm_tokens": Decimal(1500000),
    }
    faulted = UsageReport.objects.get(attempts=2)
    assert faulted.status == "sent"


def test_realtime_reports_new_usage_and_a_late_event_once(
    subscribed, record, mapped, settings, clock
):
    settings.STRIPE_USAGE_REPORTING = "realtime"
    record(usage_events(), now=timezone.now() - timedelta(minutes=1))

    tasks.stripe_report_usage.apply()

    first = {r.meter.code: r for r in UsageReport.objects.select_related("meter")}
    assert {code: (r.kind, r.event_count, r.value) for code, r in first.items()} == {
        "agent_minutes": ("realtime", 1, 61),
        "agent_tasks": ("realtime", 3, 3),
        "llm_tokens": ("realtime", 2, 1500000),
    }
    assert first["llm_tokens"].after_event_pk == 0
    assert first["llm_tokens"].through_event_pk == UsageEvent.objects.get(event_id="k2").pk

    # a late event: it belongs to the first hour but arrives now
    clock.shift(timedelta(minutes=3))
    record([ev("late-1", "llm_tokens", "0.5", T0 + timedelta(minutes=30))], now=timezone.now())
    tasks.stripe_report_usage.apply()
    tasks.stripe_report_usage.apply()  # and again: nothing new

    later = UsageReport.objects.filter(meter__code="llm_tokens").order_by("pk")
    assert later.count() == 2
    late = later.last()
    assert (late.after_event_pk, late.through_event_pk, late.event_count) == (
        first["llm_tokens"].through_event_pk,
        UsageEvent.objects.get(event_id="late-1").pk,
        1,
    )
    assert (late.quantity, late.cumulative_quantity, late.value) == (
        Decimal("0.5"),
        Decimal("1500001"),
        1,  # the two halves make one whole unit
    )
    assert totals(mapped, subscribed)["llm_tokens"] == Decimal(1500001)
    assert len(mapped.meter_events) == 4

    # the close does not report the same usage a second time
    cycle_tasks.run_billing_cycle.apply()
    assert UsageReport.objects.filter(kind="close").count() == 0
    assert len(mapped.meter_events) == 4


def test_realtime_leaves_events_younger_than_the_settle_time(
    subscribed, record, mapped, settings, clock
):
    settings.STRIPE_USAGE_REPORTING = "realtime"
    settings.STRIPE_REALTIME_SETTLE = 60
    record([ev("t1", "agent_tasks", None, T0 + timedelta(minutes=5))], now=timezone.now())
    tasks.stripe_report_usage.apply()
    assert UsageReport.objects.count() == 0
    clock.shift(timedelta(minutes=2))
    tasks.stripe_report_usage.apply()
    assert list(UsageReport.objects.values_list("value", "status")) == [(1, "sent")]


def test_report_unconfirmed_after_24_hours_is_flagged_not_resent(
    subscribed, record, mapped, settings, clock
):
    settings.STRIPE_USAGE_REPORTING = "realtime"
    record([ev("t1", "agent_tasks", None, T0 + timedelta(minutes=5))], now=timezone.now())
    mapped.inject("500", path="/v1/billing/meter_events")
    tasks.stripe_report_usage.apply()
    [report] = UsageReport.objects.all()
    clock.shift(timedelta(hours=25))
    before = len(mapped.requests)

    usage_reports.send_usage_report(report_id=report.pk)

    report.refresh_from_db()
    assert report.status == "needs_attention"
    assert mapped.requests[before:] == []
    assert any(f"usage report {report.pk}" in p for p in reconcile.reconcile_with_stripe())
    # finance staff see Stripe never got it (its summaries say 0) and resend it, same identifier
    usage_reports.retry_usage_report(report_id=report.pk, now=timezone.now())
    report.refresh_from_db()
    assert report.status == "sent"
    assert [e["identifier"] for e in mapped.meter_events] == [f"test-usage-{report.pk}"]


def test_retry_delay_backs_off_and_honours_retry_after():
    from invoicing.stripe.client import TransientStripeError

    assert [outbox.retry_delay(ConnectionError(), retries=n) for n in range(4)] == [
        5,
        10,
        20,
        40,
    ]
    assert outbox.retry_delay(ConnectionError(), retries=30) == 600
    assert outbox.retry_delay(TransientStripeError("429", retry_after=90), retries=0) == 90


def test_switching_reporting_mode_reports_each_event_once(subscribed, record, mapped, settings):
    """close -> realtime -> close: what one mode reported, the other leaves out."""
    settings.STRIPE_USAGE_REPORTING = "close"
    at = T0 + timedelta(minutes=5)
    record([ev("a1", "llm_tokens", 100, at), ev("a2", "llm_tokens", 200, at)], now=at)
    closing.close_due_periods(now=T0 + H)  # the first hour: 300, reported at close
    usage_reports.report_usage(now=timezone.now())

    settings.STRIPE_USAGE_REPORTING = "realtime"
    second = T0 + H + timedelta(minutes=5)
    record([ev("b1", "llm_tokens", 40, second)], now=timezone.now() - timedelta(minutes=1))
    record([ev("a3", "llm_tokens", 7, at)], now=timezone.now() - timedelta(minutes=1))  # late
    usage_reports.report_usage(now=timezone.now())
    realtime = UsageReport.objects.get(kind="realtime")
    assert (realtime.quantity, realtime.event_count) == (Decimal(47), 2)

    settings.STRIPE_USAGE_REPORTING = "close"
    record([ev("b2", "llm_tokens", 3, second)], now=timezone.now() - timedelta(minutes=1))
    closing.close_due_periods(now=T0 + 2 * H)  # bills b1, b2 and the late a3
    usage_reports.report_usage(now=timezone.now())

    closes = UsageReport.objects.filter(kind="close", meter__code="llm_tokens").order_by("pk")
    assert [(r.aggregate.kind, r.quantity, r.event_count) for r in closes] == [
        ("usage", Decimal(300), 2),
        ("usage", Decimal(3), 1),  # b1 went out in realtime
        ("adjustment", Decimal(0), 0),  # a3 too
    ]
    assert (
        totals(mapped, subscribed)["llm_tokens"]
        == Decimal(350)
        == sum(
            UsageEvent.objects.filter(meter__code="llm_tokens").values_list("quantity", flat=True)
        )
    )


def test_refused_report_fails_and_waits_for_finance_staff(subscribed, record, mapped, settings):
    settings.STRIPE_USAGE_REPORTING = "realtime"
    StripeMeterMapping.objects.filter(meter__code="agent_tasks").update(event_name="nowhere_evt")
    record([ev("t1", "agent_tasks", None, T0 + timedelta(minutes=5))], now=timezone.now())

    tasks.stripe_report_usage.apply()  # Stripe has no meter of that name: a permanent error

    [report] = UsageReport.objects.all()
    assert (report.status, report.attempts) == ("failed", 1)
    assert report.last_error.endswith("No active meter was found matching event_name nowhere_evt.")
    # neither the send task run again nor the resume beat resends it
    tasks.stripe_send_usage_report.apply(args=[report.pk])
    assert usage_reports.resume_usage_reports(now=timezone.now() + timedelta(hours=1)) == 0
    assert len(mapped.requests_to("POST", "/v1/billing/meter_events")) == 1
    report.refresh_from_db()
    assert (report.status, report.attempts) == ("failed", 1)

    # finance staff create the meter in Stripe and retry, twice: sent once, same identifier
    mapped.create_meter("nowhere_evt")
    usage_reports.retry_usage_report(report_id=report.pk, now=timezone.now())
    usage_reports.retry_usage_report(report_id=report.pk, now=timezone.now())
    report.refresh_from_db()
    assert (report.status, report.attempts, report.value) == ("sent", 2, 1)
    assert [e["identifier"] for e in mapped.meter_events] == [f"test-usage-{report.pk}"]
    assert AuditEntry.objects.filter(action="usage_report.retried").count() == 1
