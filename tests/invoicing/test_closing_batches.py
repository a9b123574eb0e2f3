"""Closing many customers at once: batches, their fallback, their bulk writes and audit rows."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.test import override_settings

from audit.models import AuditEntry
from audit.services import build_audit_entry
from invoicing.bulk import insert_rows
from invoicing.models import BillingPeriod, Invoice, InvoiceLine
from invoicing.services import closing, subscriptions
from invoicing.services.reconcile import reconcile
from metering import aggregation
from metering.models import UsageAggregate, UsageEvent
from tests.factories import CustomerFactory
from tests.invoicing.conftest import T0

pytestmark = pytest.mark.django_db
H = timedelta(hours=1)
CLOSE_AT = T0 + H + timedelta(minutes=11)
GRACE = {"BILLING_GRACE_PERIOD": 600, "BILLING_REVIEW_PERIOD": 1800}


@pytest.fixture
def customers(hourly_plan, record):
    """Seven customers on the hourly plan from T0, each with its own usage in the first hour."""
    made = []
    for n in range(7):
        customer = CustomerFactory(external_id=f"cust-{n}")
        subscriptions.subscribe_customer(customer=customer, plan=hourly_plan, now=T0)
        record(
            [
                {
                    "event_id": f"e-{n}-{k}",
                    "customer_id": customer.external_id,
                    "meter": ("agent_tasks", "llm_tokens", "agent_minutes")[k % 3],
                    "quantity": str(Decimal(k * 1000 + n) + Decimal("0.5")),
                    "timestamp": (T0 + timedelta(minutes=k * 7)).isoformat(),
                }
                for k in range(1, 8)
            ],
            now=T0 + 50 * timedelta(minutes=1),
        )
        made.append(customer)
    return made


def _billed_once() -> bool:
    """Every event is covered by exactly one aggregate (window, id range, meter)."""
    for event in UsageEvent.objects.all():
        covering = len(aggregation.aggregates_covering(event))
        if covering != 1:
            return False
    return True


@override_settings(**GRACE)
def test_many_batches_close_every_period_once_and_a_rerun_changes_nothing(customers):
    report = closing.close_due_periods(now=CLOSE_AT, batch_size=3)
    first = BillingPeriod.objects.filter(start=T0)
    assert sorted(report.closed) == sorted(first.values_list("pk", flat=True))
    assert report.failed == {}
    assert Invoice.objects.count() == 7 and UsageAggregate.objects.count() == 21
    assert _billed_once() and reconcile() == []
    for invoice in Invoice.objects.prefetch_related("lines"):
        lines = list(invoice.lines.all())
        assert invoice.total_minor == sum(line.amount_minor for line in lines)
        assert [line.position for line in lines] == [1, 2, 3]

    again = closing.close_due_periods(now=CLOSE_AT, batch_size=3)
    assert again.closed == [] and again.failed == {}
    closes = AuditEntry.objects.filter(action__in=["period.closed", "invoice.created"])
    assert Invoice.objects.count() == 7 and closes.count() == 7 * 2


@override_settings(**GRACE)
def test_a_failing_customer_fails_alone_and_closes_on_the_next_run(customers, monkeypatch):
    bad = customers[4]
    original = closing._cap_credit_for_new_period

    def fail_for_one(period, lines, cap):
        if period.customer_id == bad.pk:
            raise RuntimeError("this customer's data is broken")
        return original(period, lines, cap)

    monkeypatch.setattr(closing, "_cap_credit_for_new_period", fail_for_one)
    report = closing.close_due_periods(now=CLOSE_AT, batch_size=3)
    bad_period = BillingPeriod.objects.get(customer=bad, start=T0)
    assert report.failed == {bad_period.pk: "RuntimeError: this customer's data is broken"}
    assert len(report.closed) == 6 and Invoice.objects.count() == 6
    assert not Invoice.objects.filter(customer=bad).exists()
    assert not UsageAggregate.objects.filter(customer=bad).exists()
    bad_period.refresh_from_db()
    assert bad_period.status != BillingPeriod.Status.CLOSED

    monkeypatch.setattr(closing, "_cap_credit_for_new_period", original)
    report = closing.close_due_periods(now=CLOSE_AT, batch_size=3)
    assert report.closed == [bad_period.pk] and report.failed == {}
    assert Invoice.objects.count() == 7
    assert _billed_once() and reconcile() == []


@override_settings(**GRACE)
def test_audit_entries_of_a_close_are_what_build_audit_entry_records(customers):
    closing.close_due_periods(now=CLOSE_AT)
    period = BillingPeriod.objects.select_related("customer").get(customer=customers[2], start=T0)
    invoice = Invoice.objects.get(period=period)
    lines = list(invoice.lines.select_related("meter").order_by("position"))
    expected = [
        build_audit_entry(
            action="period.closed",
            obj=period,
            customer_external_id="cust-2",
            data={
                "invoice_id": invoice.pk,
                "period_start": period.start,
                "period_end": period.end,
                "event_count": 7,
                "quantities": {f"usage:{line.meter.code}": str(line.quantity) for line in lines},
                "total_minor": invoice.total_minor,
            },
        ),
        build_audit_entry(
            action="invoice.created",
            obj=invoice,
            customer_external_id="cust-2",
            data={
                "period_id": period.pk,
                "status": "draft",
                "total_minor": invoice.total_minor,
                "lines": 3,
            },
        ),
    ]
    fields = ("action", "actor_id", "actor", "object_type", "object_id", "customer_external_id")
    written = [
        AuditEntry.objects.get(action=entry.action, object_id=entry.object_id) for entry in expected
    ]
    for got, want in zip(written, expected, strict=True):
        assert [getattr(got, f) for f in fields] == [getattr(want, f) for f in fields]
        # Quantities are written as the close computed them ("2" for a count, where the
        # stored line says 2.000000): compare their values.
        got_quantities = got.data.pop("quantities", {})
        want_quantities = want.data.pop("quantities", {})
        assert got.data == want.data
        assert {k: Decimal(v) for k, v in got_quantities.items()} == {
            k: Decimal(v) for k, v in want_quantities.items()
        }
        assert got.at is not None


def test_insert_rows_returns_keys_in_row_order_and_fills_defaults(customers):
    period = BillingPeriod.objects.filter(customer=customers[0]).first()
    customer_ids = [c.pk for c in reversed(customers)]
    pks = insert_rows(
        Invoice,
        {
            "customer_id": customer_ids[:1],
            "period_id": [period.pk],
            "currency": ["USD"],
            "total_minor": [1234],
            "finalize_after": [T0],
        },
    )
    invoice = Invoice.objects.get(pk=pks[0])
    assert (invoice.status, invoice.number, invoice.void_reason, invoice.total_minor) == (
        "draft",
        None,
        "",
        1234,
    )
    assert invoice.created_at is not None and invoice.updated_at is not None
    line_pks = insert_rows(
        InvoiceLine,
        {
            "invoice_id": [invoice.pk] * 3,
            "position": [3, 1, 2],
            "kind": ["usage", "usage", "cap_credit"],
            "description": ["c", "a", "b"],
            "quantity": [Decimal("1.000001"), Decimal(0), Decimal("123456789.5")],
            "amount_minor": [-5, 0, 7],
            "pricing": [{"model": None}, {"portions": [{"quantity": "1"}]}, {}],
        },
        match_on=("invoice_id", "position"),
    )
    stored = {line.pk: line for line in InvoiceLine.objects.filter(invoice=invoice)}
    assert [
        (stored[pk].position, stored[pk].description, stored[pk].quantity, stored[pk].pricing)
        for pk in line_pks
    ] == [
        (3, "c", Decimal("1.000001"), {"model": None}),
        (1, "a", Decimal(0), {"portions": [{"quantity": "1"}]}),
        (2, "b", Decimal("123456789.5"), {}),
    ]
    assert all(stored[pk].meter_id is None and stored[pk].aggregate_id is None for pk in line_pks)


def test_insert_rows_skips_conflicts_only_when_asked(customers, hourly_plan):
    existing = BillingPeriod.objects.get(customer=customers[0], start=T0)
    rows = {
        "customer_id": [customers[0].pk, customers[0].pk],
        "plan_id": [hourly_plan.pk, hourly_plan.pk],
        "start": [T0, T0 + 5 * H],  # the first exists already
        "end": [T0 + H, T0 + 6 * H],
    }
    assert insert_rows(BillingPeriod, rows, ignore_conflicts=True) == []
    new = BillingPeriod.objects.get(customer=customers[0], start=T0 + 5 * H)
    assert new.status == BillingPeriod.Status.OPEN and new.created_at is not None
    assert BillingPeriod.objects.filter(customer=customers[0], start=T0).get() == existing
    with pytest.raises(IntegrityError), transaction.atomic():
        insert_rows(BillingPeriod, rows)
    with pytest.raises(ValueError, match="repeat a value"), transaction.atomic():
        insert_rows(
            BillingPeriod,
            {**rows, "start": [T0 + 7 * H, T0 + 8 * H], "end": [T0 + 8 * H, T0 + 9 * H]},
            match_on=("customer_id",),
        )
    with pytest.raises(ValueError, match="one value per row"):
        insert_rows(BillingPeriod, {"customer_id": [1], "start": []})
