"""Normal delivery against the real service, and what the client does with each answer."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metering.models import UsageEvent
from tests.client.helpers import stored
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_500_records_from_4_threads_are_stored_exactly_once(make_client, customer, meters):
    client = make_client(batch_size=100)
    expected: dict[str, tuple[str, Decimal]] = {}
    lock = threading.Lock()
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def agent(number: int) -> None:
        try:
            start.wait(timeout=10)
            for i in range(125):
                if i % 5 == 0:  # a count meter: quantity defaults to 1
                    event_id = client.record("acme", "agent_tasks")
                    value = ("agent_tasks", Decimal(1))
                else:  # exact decimals with 6 places, sent as strings
                    quantity = Decimal(f"{number * 1000 + i}.{i:06d}")
                    event_id = client.record("acme", "llm_tokens", quantity, {"agent": number})
                    value = ("llm_tokens", quantity)
                with lock:
                    expected[event_id] = value
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert len(expected) == 500

    assert client.flush(timeout=30)
    assert stored() == expected
    assert UsageEvent.objects.count() == 500
    stats = client.stats
    assert stats["recorded"] == 500
    assert (stats["accepted"], stats["duplicates"], stats["conflicts"]) == (500, 0, 0)
    assert stats["batches"] >= 5  # at most 100 events a request
    assert stats["pending"] == 0


def test_invalid_events_become_dead_letters_and_the_rest_is_delivered(
    make_client, customer, meters
):
    client = make_client(flush_interval=60)  # one batch, sent by flush()
    good = [client.record("acme", "agent_tasks") for _ in range(3)]
    unknown_customer = client.record("nobody", "agent_tasks")
    good.append(client.record("acme", "llm_tokens", 10))
    unknown_meter = client.record("acme", "no_such_meter", 1)

    assert client.flush(timeout=20)
    assert set(stored()) == set(good)
    letters = {letter["event_id"]: letter for letter in client.dead_letters()}
    assert set(letters) == {unknown_customer, unknown_meter}
    assert letters[unknown_customer]["error"] == "customer_id: unknown customer"
    assert letters[unknown_meter]["error"] == "meter: unknown or inactive meter"
    assert letters[unknown_meter]["status"] == 422
    assert client.stats["dead_lettered"] == 2

    # Once the customer exists, its dead letter can be sent again.
    CustomerFactory(external_id="nobody")
    target = next(v["seq"] for v in letters.values() if v["event_id"] == unknown_customer)
    assert client.requeue_dead_letters([target]) == 1
    assert client.flush(timeout=20)
    assert unknown_customer in stored()
    assert [letter["event_id"] for letter in client.dead_letters()] == [unknown_meter]


def test_a_refused_key_stops_delivery_and_keeps_the_events(
    make_client, customer, meters, spool_path, caplog
):
    bad = make_client(key="mk_AAAAAAAA_" + "A" * 40)
    ids = [bad.record("acme", "agent_tasks") for _ in range(3)]
    with caplog.at_level(logging.CRITICAL, logger="agent_billing"):
        assert not bad.flush(timeout=10)  # returns as soon as the key is refused
    assert bad.stats["delivery_stopped"]
    assert bad.pending() == 3
    assert UsageEvent.objects.count() == 0
    assert any("STOPPED" in r.getMessage() for r in caplog.records if r.levelname == "CRITICAL")
    bad.close(timeout=0)

    good = make_client()  # same spool, a valid key: the kept events go out
    assert good.flush(timeout=20)
    assert set(stored()) == set(ids)


def test_429_retry_after_is_honoured(make_client, customer, meters, proxy):
    proxy.mode, proxy.fail_times, proxy.retry_after = "429", 1, "1"
    client = make_client(proxy.url)
    event_id = client.record("acme", "agent_tasks")
    assert client.flush(timeout=20)
    first, second = proxy.posts()[:2]
    assert first["mode"] == "429" and second["mode"] == "pass"
    assert second["at"] - first["at"] >= 0.95  # waited as told, not the 50 ms backoff
    assert set(stored()) == {event_id}


def test_the_same_event_twice_is_stored_once_and_a_changed_payload_is_a_conflict(
    make_client, customer, meters, caplog
):
    client = make_client(flush_interval=60)
    at = datetime.now(UTC) - timedelta(minutes=1)
    client.record("acme", "llm_tokens", 5, event_id="run-1-step-1", timestamp=at)
    client.record("acme", "llm_tokens", 5, event_id="run-1-step-1", timestamp=at)  # waiting
    assert client.stats["local_duplicates"] == 1
    assert client.pending() == 1
    assert client.flush(timeout=20)
    client.record("acme", "llm_tokens", "5.000000", event_id="run-1-step-1", timestamp=at)
    assert client.flush(timeout=20)
    assert client.stats["duplicates"] == 1  # the service's answer to the resend
    assert stored() == {"run-1-step-1": ("llm_tokens", Decimal(5))}

    with caplog.at_level(logging.WARNING, logger="agent_billing"):
        client.record("acme", "llm_tokens", 6, event_id="run-1-step-1", timestamp=at)  # a bug
        assert client.flush(timeout=20)
    assert stored() == {"run-1-step-1": ("llm_tokens", Decimal(5))}  # the first one is kept
    assert client.stats["conflicts"] == 1
    assert [c["event"]["quantity"] for c in client.conflicts()] == ["6"]
    assert any("different payload" in r.getMessage() for r in caplog.records)
