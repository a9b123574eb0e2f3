"""Hourly rollups: maintained in the ingestion transaction, equal to the events, and read
for any window (partial hours at the edges included) exactly as events would give."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invoicing.services.reconcile import reconcile
from metering import aggregation, services
from metering.models import Meter, UsageRollup
from tests.factories import MeterFactory

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
BASE = NOW - timedelta(hours=10)


def _events(n: int = 60) -> list[dict]:
    events = []
    for i in range(n):
        at = BASE + timedelta(minutes=7 * i + (i % 3))
        events.append(
            {
                "event_id": f"tok-{i}",
                "customer_id": "acme",
                "meter": "llm_tokens",
                "quantity": f"{(i * 37) % 1000}.{i % 7}",
                "timestamp": at.isoformat(),
            }
        )
        events.append(
            {
                "event_id": f"task-{i}",
                "customer_id": "acme",
                "meter": "agent_tasks",
                "timestamp": at.isoformat(),
            }
        )
        events.append(
            {
                "event_id": f"seats-{i}",
                "customer_id": "acme",
                "meter": "seats",
                "quantity": str((i * 13) % 50),
                "timestamp": at.isoformat(),
            }
        )
        events.append(
            {
                "event_id": f"level-{i}",
                "customer_id": "acme",
                "meter": "level",
                "quantity": str((i * 7) % 30),
                "timestamp": at.isoformat(),
                "properties": {"agent_id": f"a{i % 4}"},
            }
        )
    return events


@pytest.fixture
def loaded(db, customer, meters, service_key):
    MeterFactory(code="seats", aggregation="max")
    MeterFactory(code="level", aggregation="latest")
    MeterFactory(code="agents", aggregation="unique_count", unique_property="agent_id")
    events = _events()
    for chunk in range(0, len(events), 97):
        services.record_usage_events(
            api_key=service_key[0], raw_events=events[chunk : chunk + 97], now=NOW
        )
    return customer


def test_rollups_equal_their_events_after_ingestion(loaded):
    assert UsageRollup.objects.filter(meter__code="agent_tasks").count() == 7  # 02:00-08:55
    assert reconcile() == []
    # a duplicate batch changes nothing
    services.record_usage_events(
        api_key=services.create_api_key(name="k")[0], raw_events=_events()[:50], now=NOW
    )
    assert reconcile() == []


# The fixture's events are only read, so sharing them across examples is sound.
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    start_minutes=st.integers(min_value=-60, max_value=600),
    length_minutes=st.integers(min_value=1, max_value=720),
)
def test_window_quantities_equal_summaries_from_events(loaded, start_minutes, length_minutes):
    start = BASE + timedelta(minutes=start_minutes)
    end = start + timedelta(minutes=length_minutes)
    meters = {m.pk: m for m in Meter.objects.all()}
    from_events = {
        meter_id: usage.quantity
        for meter_id, usage in aggregation.summarize_window(
            customer_id=loaded.pk, start=start, end=end, meters=meters
        ).items()
    }
    assert (
        aggregation.window_quantities(customer_id=loaded.pk, start=start, end=end, meters=meters)
        == from_events
    )


def test_a_half_hour_zone_window_reads_edges_from_events(loaded):
    # Asia/Kolkata midnight is 18:30 UTC: both edges are partial hours
    start, end = BASE + timedelta(minutes=30), BASE + timedelta(hours=5, minutes=30)
    meters = {m.pk: m for m in Meter.objects.all()}
    got = aggregation.window_quantities(customer_id=loaded.pk, start=start, end=end, meters=meters)
    tokens = Meter.objects.get(code="llm_tokens").pk
    tasks = Meter.objects.get(code="agent_tasks").pk
    in_window = [i for i in range(60) if start <= BASE + timedelta(minutes=7 * i + i % 3) < end]
    assert got[tasks] == Decimal(len(in_window))
    assert got[tokens] == sum(Decimal(f"{(i * 37) % 1000}.{i % 7}") for i in in_window)


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_keep_rollups_exact(customer, meters, service_key):
    barrier = threading.Barrier(6)
    errors = []

    def post(offset: int) -> None:
        try:
            events = [
                {
                    "event_id": f"c-{(offset * 40 + i) % 150}",
                    "customer_id": "acme",
                    "meter": "llm_tokens",
                    "quantity": str((offset * 40 + i) % 150),
                    "timestamp": (NOW - timedelta(minutes=(offset * 40 + i) % 150)).isoformat(),
                }
                for i in range(80)
            ]
            barrier.wait()
            services.record_usage_events(api_key=service_key[0], raw_events=events, now=NOW)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=post, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    total = sum(UsageRollup.objects.values_list("quantity", flat=True))
    assert total == sum(Decimal(k) for k in range(150))
    assert reconcile() == []
