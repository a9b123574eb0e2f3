"""Two real Celery workers (Redis broker, PostgreSQL) race to close the same due periods:
each period is closed exactly once, with one invoice and one audit entry."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from celery import Celery
from django.utils import timezone

from audit.models import AuditEntry
from invoicing.models import BillingPeriod, Invoice
from invoicing.services import plans, subscriptions
from invoicing.services.reconcile import reconcile
from metering import services as metering_services
from tests.e2e.processes import redis_server, start_worker, stop, wait_for
from tests.factories import CustomerFactory
from tests.invoicing.conftest import EXAMPLE_PRICES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.needs("redis-server"),
]
CUSTOMERS = 60
CYCLE_SUCCEEDED = r"Task billing_cycle\.run_billing_cycle\[[0-9a-f-]+\] succeeded"


def test_two_workers_close_each_period_exactly_once(meters, service_key, tmp_path):
    now = timezone.now()
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    plan = plans.create_plan_version(
        code="race", name="Race", currency="USD", interval="hour", prices=EXAMPLE_PRICES
    )
    for n in range(CUSTOMERS):
        customer = CustomerFactory(external_id=f"race-{n}")
        subscriptions.subscribe_customer(customer=customer, plan=plan, now=start, anchor=start)
        metering_services.record_usage_events(
            api_key=service_key[0],
            raw_events=[
                {
                    "event_id": f"e-{n}-{k}",
                    "customer_id": customer.external_id,
                    "meter": "agent_tasks",
                    "timestamp": (start + timedelta(minutes=k * 7)).isoformat(),
                }
                for k in range(20)
            ],
            now=now,
        )
    with redis_server(tmp_path) as broker:
        logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
        workers = [
            start_worker(broker_url=broker, name="a", log=logs[0]),
            start_worker(broker_url=broker, name="b", log=logs[1]),
        ]
        try:
            sender = Celery(broker=broker, set_as_current=False)
            for _ in range(8):  # beat firing repeatedly, retries, duplicates
                sender.send_task("billing_cycle.run_billing_cycle")
            # three hours have ended since the customers subscribed: three periods each
            expected = CUSTOMERS * 3
            due = BillingPeriod.objects.filter(end__lte=now)
            wait_for(
                lambda: due.filter(status=BillingPeriod.Status.CLOSED).count() == expected,
                timeout=120,
                what="every due period to close",
            )
            # every run finishes (after the first closes, the others find nothing due; the
            # summaries' sends, queued by the closes, share the queue with them)
            wait_for(
                lambda: sum(len(re.findall(CYCLE_SUCCEEDED, log.read_text())) for log in logs) == 8,
                timeout=120,
                what="the 8 billing cycle runs",
            )
        finally:
            for worker in workers:
                stop(worker)
    assert Invoice.objects.count() == expected
    assert AuditEntry.objects.filter(action="period.closed").count() == expected
    for period in due:
        assert Invoice.objects.filter(period=period).count() == 1
    assert (
        sum(
            line.quantity
            for invoice in Invoice.objects.all()
            for line in invoice.lines.filter(meter__code="agent_tasks")
        )
        == CUSTOMERS * 20
    )
    # the cycles' runs (their summaries' sends, queued after the closes, succeed too)
    worked = [len(re.findall(CYCLE_SUCCEEDED, log.read_text())) for log in logs]
    assert sum(worked) == 8 and all(n > 0 for n in worked), worked
    assert reconcile() == []
