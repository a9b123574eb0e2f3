"""Concurrent ingestion on real PostgreSQL: many requests at once still store each event once.

Real threads, each with its own API client and database connection, released together by a
barrier; the data they need is committed first (transaction=True).
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter

import pytest
from django.db import connection
from rest_framework.test import APIClient

from metering.models import UsageEvent
from tests.metering.helpers import EVENTS_URL, batch, make_event, stored_rows

# Row locks and index-entry order under concurrent INSERTs (SQLite serializes writers whole).
pytestmark = pytest.mark.postgres
THREADS = 20
SLOW_INSERT_SECONDS = 0.002


@pytest.fixture
def slow_inserts(transactional_db):
    """Each inserted row takes a moment (a test-only trigger), so concurrent requests overlap.

    Without it one request's INSERT finishes in well under a millisecond and the threads
    barely meet in the database. BEFORE INSERT triggers fire for every proposed row, also for
    rows that then hit ON CONFLICT, so every request holds its locks for a while.
    """
    table = UsageEvent._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_slow_insert() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_sleep({SLOW_INSERT_SECONDS}); RETURN NEW; END $$"
        )
        cursor.execute(
            f"CREATE TRIGGER test_slow_insert BEFORE INSERT ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION test_slow_insert()"
        )
    yield
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TRIGGER test_slow_insert ON {table}")
        cursor.execute("DROP FUNCTION test_slow_insert()")


def _post_together(plaintext: str, bodies: list[dict]) -> list[tuple[int, dict]]:
    """POST bodies[i] from thread i, all released at once; (status, body) in thread order."""
    barrier = threading.Barrier(len(bodies), timeout=30)
    results: list[tuple[int, dict] | BaseException | None] = [None] * len(bodies)

    def worker(index: int) -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
        try:
            barrier.wait()
            response = client.post(EVENTS_URL, bodies[index], format="json")
            results[index] = (response.status_code, response.json())
        except BaseException as exc:  # reported to the test thread below
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a request never finished"
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def _status_counts(results: list[tuple[int, dict]]) -> Counter:
    return Counter(item["status"] for _, body in results for item in body["events"])


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("slow_inserts")
def test_the_same_batch_posted_by_20_threads_at_once_is_stored_once(
    service_key, customer, meters, caplog
):
    events = [make_event(event_id=f"evt-{i:02d}", quantity=i + 1) for i in range(50)]
    caplog.set_level(logging.WARNING, logger="metering.services")

    results = _post_together(service_key[1], [batch(*events)] * THREADS)

    assert [status for status, _ in results] == [202] * THREADS
    assert sum(body["accepted"] for _, body in results) == 50
    assert sum(body["conflicts"] for _, body in results) == 0
    assert _status_counts(results) == Counter({"accepted": 50, "duplicate": 50 * (THREADS - 1)})
    for _, body in results:
        assert [item["event_id"] for item in body["events"]] == [e["event_id"] for e in events]
        assert body["accepted"] + body["duplicates"] == 50
    # Every event id was accepted by exactly one of the requests.
    accepted_ids = Counter(
        item["event_id"]
        for _, body in results
        for item in body["events"]
        if item["status"] == "accepted"
    )
    assert accepted_ids == Counter({e["event_id"]: 1 for e in events})
    rows = stored_rows()
    assert [(row["event_id"], row["quantity"]) for row in rows] == [
        (e["event_id"], e["quantity"]) for e in events
    ]
    assert UsageEvent.objects.count() == 50
    assert not [r for r in caplog.records if "retried" in r.getMessage()]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("slow_inserts")
def test_overlapping_batches_in_different_orders_do_not_deadlock(
    service_key, customer, other_customer, meters, caplog
):
    # The same 100 (customer, event id) pairs, shuffled differently for every thread.
    events = [
        make_event(event_id=f"evt-{i:03d}", customer_id=("acme", "globex")[i % 2], quantity=i)
        for i in range(100)
    ]
    bodies = []
    for thread_index in range(THREADS):
        shuffled = list(events)
        random.Random(thread_index).shuffle(shuffled)
        bodies.append(batch(*shuffled))
    caplog.set_level(logging.WARNING, logger="metering.services")

    results = _post_together(service_key[1], bodies)

    assert [status for status, _ in results] == [202] * THREADS
    assert sum(body["accepted"] for _, body in results) == 100
    assert _status_counts(results) == Counter({"accepted": 100, "duplicate": 100 * (THREADS - 1)})
    for body, (_, response) in zip(bodies, results, strict=True):
        assert [item["event_id"] for item in response["events"]] == [
            e["event_id"] for e in body["events"]
        ]
    assert UsageEvent.objects.count() == 100
    assert sorted(
        (row["customer__external_id"], row["event_id"], row["quantity"]) for row in stored_rows()
    ) == sorted((e["customer_id"], e["event_id"], e["quantity"]) for e in events)
    # Inserts take their locks in one global order, so not even a retried deadlock happens.
    assert not [r for r in caplog.records if "retried" in r.getMessage()]
