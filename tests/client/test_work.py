"""Units of work, timers and the decorator record the right meters; a retry is a duplicate."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from agent_billing import current_work

from metering.models import UsageEvent
from tests.client.helpers import stored

pytestmark = pytest.mark.django_db(transaction=True)


def test_unit_of_work_timer_and_decorator_record_meters_and_quantities(
    make_client, customer, meters
):
    client = make_client()

    with client.unit_of_work(
        "acme", minutes_meter="agent_minutes", properties={"agent_id": "a1"}
    ) as work:
        time.sleep(0.06)
        work.add("llm_tokens", 1200)
        work.add("llm_tokens", Decimal("800"))

    with pytest.raises(RuntimeError, match="tool failed"):
        with client.unit_of_work("acme", minutes_meter="agent_minutes") as failed:
            failed.add("llm_tokens", 5)
            raise RuntimeError("tool failed")

    with client.timer("acme") as timer:
        time.sleep(0.03)

    @client.track(customer_id=lambda job: job["customer"])
    def handle(job: dict) -> int:
        current_work().add("llm_tokens", job["tokens"])
        return job["tokens"]

    assert handle({"customer": "acme", "tokens": 300}) == 300
    assert handle({"customer": "acme", "tokens": 200}) == 200
    assert client.flush(timeout=20)

    events = stored()
    assert events[f"{work.work_id}:agent_tasks"] == ("agent_tasks", Decimal(1))
    assert events[f"{work.work_id}:llm_tokens"] == ("llm_tokens", Decimal(2000))
    meter, minutes = events[f"{work.work_id}:agent_minutes"]
    assert meter == "agent_minutes" and minutes == work.minutes
    assert Decimal("0.001") <= minutes < Decimal("0.1")  # 60 ms = 0.001 min, 6 places
    assert minutes == minutes.quantize(Decimal("0.000001"))

    assert not [e for e in events if e.startswith(failed.work_id)]  # a failed task: nothing

    assert events[f"{timer.work_id}:agent_minutes"] == ("agent_minutes", timer.minutes)
    assert Decimal("0.0005") <= timer.minutes < Decimal("0.1")

    tracked = {e: v for e, v in events.items() if not e.startswith((work.work_id, timer.work_id))}
    assert sorted(tracked.values()) == [
        ("agent_tasks", Decimal(1)),
        ("agent_tasks", Decimal(1)),
        ("llm_tokens", Decimal(200)),
        ("llm_tokens", Decimal(300)),
    ]
    assert len(events) == 3 + 1 + 4

    # The events of one unit share its timestamp and properties.
    rows = UsageEvent.objects.filter(event_id__startswith=work.work_id)
    assert {row.timestamp for row in rows} == {rows[0].timestamp}
    assert all(row.properties == {"agent_id": "a1"} for row in rows)


def test_a_retried_unit_of_work_is_a_duplicate_not_a_new_charge(
    make_client, customer, meters, tmp_path
):
    client = make_client()
    with client.unit_of_work("acme", minutes_meter="agent_minutes") as work:
        work.add("llm_tokens", 700)
    assert client.flush(timeout=20)
    assert client.stats["accepted"] == 3

    # The recording runs again (a retry after a crash between recording and the caller's
    # own bookkeeping): the same ids and payloads, so the service answers "duplicate".
    work.record()
    assert client.flush(timeout=20)
    assert (client.stats["accepted"], client.stats["duplicates"]) == (3, 3)

    # The whole job runs again in another process (a fresh spool), with the job's id as the
    # work id and its original start time: again duplicates, nothing new stored.
    retry = make_client(spool=tmp_path / "other-process.sqlite3")
    with retry.unit_of_work("acme", work_id=work.work_id, timestamp=work.timestamp) as again:
        again.add("llm_tokens", 300)
        again.add("llm_tokens", 400)
    assert retry.flush(timeout=20)
    stats = retry.stats
    assert (stats["accepted"], stats["duplicates"], stats["conflicts"]) == (0, 2, 0)
    assert UsageEvent.objects.count() == 3
    assert stored()[f"{work.work_id}:llm_tokens"] == ("llm_tokens", Decimal(700))
