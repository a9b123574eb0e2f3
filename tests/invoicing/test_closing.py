"""Closing periods: invoices equal the events, exactly once, late events as adjustments."""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connection
from django.test import override_settings

from audit.models import AuditEntry
from invoicing import selectors
from invoicing.models import BillingPeriod, Invoice, InvoiceLine
from invoicing.services import closing, invoices
from invoicing.services.reconcile import reconcile
from metering.models import UsageAggregate, UsageEvent
from notifications import services as notification_services
from tests.invoicing.conftest import T0

pytestmark = pytest.mark.django_db
H = timedelta(hours=1)
GRACE = {"BILLING_GRACE_PERIOD": 600, "BILLING_REVIEW_PERIOD": 1800}


def ev(event_id, meter, quantity, at, **props):
    event = {
        "event_id": event_id,
        "customer_id": "acme",
        "meter": meter,
        "timestamp": at.isoformat(),
        "properties": props,
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


def lines_of(invoice):
    return [
        (line.kind, line.meter.code if line.meter else None, line.quantity, line.amount_minor)
        for line in invoice.lines.select_related("meter").order_by("position")
    ]


@override_settings(**GRACE)
def test_close_makes_a_draft_whose_lines_equal_the_events(subscribed, record):
    record(usage_events(), now=T0 + 20 * timedelta(minutes=1))
    assert closing.close_due_periods(now=T0 + H + timedelta(minutes=9)).closed == []  # grace

    report = closing.close_due_periods(now=T0 + H + timedelta(minutes=10))

    period = BillingPeriod.objects.get(customer=subscribed, start=T0)
    assert report.closed == [period.pk] and report.failed == {}
    invoice = Invoice.objects.get(period=period)
    # tokens: 1,500,000.5 - 100,000 included = 1,400,000.5 billable:
    # 1,000,000 x 0.002 + 400,000.5 x 0.001 = 2000 + 400.0005 = 2400.0005 -> 2400
    # minutes: ceil(61/60) = 2 packages x 150 = 300 -> raised to the 500 minimum
    assert lines_of(invoice) == [
        ("usage", "agent_minutes", Decimal("61"), 500),
        ("usage", "agent_tasks", Decimal("3"), 15),
        ("usage", "llm_tokens", Decimal("1500000.5"), 2400),
    ]
    assert invoice.total_minor == 2915
    assert invoice.status == "draft" and invoice.number is None
    assert period.status == "closed"
    # every event is billed by the aggregate behind its meter's line
    for event in UsageEvent.objects.all():
        line = selectors.line_for_event(event=event)
        assert line.invoice == invoice and line.meter_id == event.meter_id
    tokens_line = invoice.lines.get(meter__code="llm_tokens")
    assert [e.event_id for e in selectors.events_for_line(line=tokens_line)] == ["k1", "k2"]
    agg = tokens_line.aggregate
    assert (agg.event_count, agg.first_event_at, agg.last_event_at) == (
        2,
        T0 + timedelta(minutes=5),
        T0 + timedelta(minutes=14),
    )
    audit = AuditEntry.objects.get(action="period.closed")
    assert audit.data["invoice_id"] == invoice.pk and audit.data["event_count"] == 6
    assert reconcile() == []


@override_settings(**GRACE)
def test_next_period_and_empty_periods_get_invoices(subscribed, record):
    report = closing.close_due_periods(now=T0 + 3 * H + timedelta(minutes=10))
    assert len(report.closed) == 3  # three hours passed: three invoices, no gaps
    totals = list(Invoice.objects.order_by("period__start").values_list("total_minor", flat=True))
    assert totals == [500, 500, 500]  # only the minutes minimum
    starts = list(BillingPeriod.objects.order_by("start").values_list("start", "end"))
    assert all(a[1] == b[0] for a, b in itertools.pairwise(starts))


@override_settings(**GRACE)
def test_closing_twice_gives_one_invoice(subscribed, record):
    record(usage_events(), now=T0 + 20 * timedelta(minutes=1))
    now = T0 + H + timedelta(minutes=10)
    first = closing.close_due_periods(now=now)
    second = closing.close_due_periods(now=now)
    assert len(first.closed) == 1 and second.closed == []
    period = BillingPeriod.objects.get(start=T0)
    again = closing.close_billing_period(period_id=period.pk, now=now)
    assert again == Invoice.objects.get(period=period)
    assert Invoice.objects.count() == 1 and UsageAggregate.objects.count() == 3


@override_settings(**GRACE)
def test_failure_after_lines_rolls_back_and_rerun_is_identical(subscribed, record, monkeypatch):
    record(usage_events(), now=T0 + 20 * timedelta(minutes=1))
    now = T0 + H + timedelta(minutes=10)
    original = closing._write_invoices

    def write_then_fail(**kwargs):
        original(**kwargs)
        assert InvoiceLine.objects.count() == 3  # the lines were written...
        raise RuntimeError("crash after the lines")

    monkeypatch.setattr(closing, "_write_invoices", write_then_fail)
    report = closing.close_due_periods(now=now)
    period = BillingPeriod.objects.get(start=T0)
    assert list(report.failed) == [period.pk]
    # ...and all of it rolled back
    assert Invoice.objects.count() == 0 and UsageAggregate.objects.count() == 0
    period.refresh_from_db()
    assert period.status != "closed"

    monkeypatch.setattr(closing, "_write_invoices", original)
    report = closing.close_due_periods(now=now)
    invoice = Invoice.objects.get(period=period)
    assert lines_of(invoice) == [
        ("usage", "agent_minutes", Decimal("61"), 500),
        ("usage", "agent_tasks", Decimal("3"), 15),
        ("usage", "llm_tokens", Decimal("1500000.5"), 2400),
    ]
    assert reconcile() == []


@override_settings(**GRACE)
def test_late_event_becomes_one_adjustment_line_rated_at_the_margin(subscribed, record):
    record(usage_events(), now=T0 + 20 * timedelta(minutes=1))
    closing.close_due_periods(now=T0 + H + timedelta(minutes=10))
    # 200,000 more tokens for the first hour arrive after its close
    late_at = T0 + H + timedelta(minutes=30)
    record([ev("late-1", "llm_tokens", 200_000, T0 + timedelta(minutes=50))], now=late_at)
    record([ev("late-1", "llm_tokens", 200_000, T0 + timedelta(minutes=50))], now=late_at)

    closing.close_due_periods(now=T0 + 2 * H + timedelta(minutes=10))

    second = Invoice.objects.get(period__start=T0 + H)
    adjustments = second.lines.filter(kind="adjustment")
    assert adjustments.count() == 1
    line = adjustments.get()
    # the first hour now has 1,700,000.5 tokens: rated 2600.0005 -> 2600, was 2400: +200
    assert (line.quantity, line.amount_minor) == (Decimal("200000"), 200)
    assert "received late" in line.description
    assert line.source_period == BillingPeriod.objects.get(start=T0)
    assert second.total_minor == 500 + 200
    late = UsageEvent.objects.get(event_id="late-1")
    assert selectors.line_for_event(event=late) == line
    # a third close bills nothing again
    closing.close_due_periods(now=T0 + 3 * H + timedelta(minutes=10))
    assert InvoiceLine.objects.filter(kind="adjustment").count() == 1
    assert reconcile() == []


@override_settings(**GRACE)
def test_finalize_waits_for_summary_and_review_then_numbers_gaplessly(
    subscribed, record, django_capture_on_commit_callbacks, mailoutbox
):
    closing.close_due_periods(now=T0 + 2 * H + timedelta(minutes=10))
    # the review period has passed but no summary was sent: nothing is finalized
    assert invoices.finalize_due_invoices(now=T0 + 3 * H).finalized == []
    with (
        time_machine.travel(T0 + 2 * H + timedelta(minutes=10), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert notification_services.queue_usage_summaries() == 2
    assert len(mailoutbox) == 2
    assert invoices.finalize_due_invoices(now=T0 + 2 * H + timedelta(minutes=11)).finalized == []
    done = invoices.finalize_due_invoices(now=T0 + 3 * H).finalized
    assert len(done) == 2
    numbers = list(Invoice.objects.order_by("period__start").values_list("number", flat=True))
    assert numbers == ["INV-2026-000001", "INV-2026-000002"]
    assert invoices.finalize_due_invoices(now=T0 + 3 * H).finalized == []
    assert AuditEntry.objects.filter(action="invoice.finalized").count() == 2


def test_reconcile_finds_injected_drift(subscribed, record, settings):
    settings.BILLING_GRACE_PERIOD = 0
    record(usage_events(), now=T0 + 20 * timedelta(minutes=1))
    closing.close_due_periods(now=T0 + H)
    assert reconcile() == []
    line = InvoiceLine.objects.get(meter__code="agent_tasks")
    InvoiceLine.objects.filter(pk=line.pk).update(amount_minor=16)
    UsageEvent.objects.filter(event_id="k2").update(quantity=Decimal("1"))
    problems = reconcile()
    assert any(f"line {line.pk}" in p and "16 != 15" in p for p in problems)
    assert any("sum of lines" in p for p in problems)
    assert any("llm_tokens" in p and "its events sum to 900001" in p for p in problems)


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_closers_make_one_invoice(subscribed, record, settings):
    settings.BILLING_GRACE_PERIOD = 0
    record(usage_events(), now=T0 + 20 * timedelta(minutes=1))
    now = T0 + H
    barrier = threading.Barrier(2)
    results, errors = [], []

    def closer():
        try:
            barrier.wait()
            results.append(closing.close_due_periods(now=now))
        except Exception as exc:  # recorded for the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=closer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert sum(len(r.closed) for r in results) >= 1
    assert all(r.failed == {} for r in results)
    assert Invoice.objects.count() == 1
    assert AuditEntry.objects.filter(action="period.closed").count() == 1
    assert UsageAggregate.objects.count() == 3
    assert reconcile() == []
