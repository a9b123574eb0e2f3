"""The service down: events are spooled, then delivered exactly once when it is back."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metering.models import UsageEvent
from tests.client.helpers import spooled, stored
from tests.client.proxy import free_port

pytestmark = pytest.mark.django_db(transaction=True)


def test_outage_then_recovery_delivers_every_event_once(make_client, customer, meters, proxy):
    proxy.mode = "reset"  # connections closed without an answer
    client = make_client(proxy.url, batch_size=50)
    expected = {}
    for i in range(150):
        quantity = Decimal(100 + i)
        expected[client.record("acme", "llm_tokens", quantity)] = ("llm_tokens", quantity)

    assert not client.flush(timeout=1.0)
    assert client.pending() == 150
    proxy.mode = "503"
    assert not client.flush(timeout=1.0)
    assert client.pending() == 150
    assert UsageEvent.objects.count() == 0
    modes = {r["mode"] for r in proxy.posts()}
    assert modes == {"reset", "503"}  # it kept retrying through both kinds of failure

    proxy.mode = "pass"
    assert client.flush(timeout=30)
    assert stored() == expected
    stats = client.stats
    assert (stats["accepted"], stats["duplicates"], stats["conflicts"]) == (150, 0, 0)
    assert stats["retries"] >= 2 and stats["pending"] == 0


def test_a_lost_answer_is_resent_and_reported_as_duplicates(make_client, customer, meters, proxy):
    """The worst outage: the service stored the batch but the answer never arrived."""
    proxy.mode, proxy.fail_times = "lost", 2  # two requests stored, answered 502
    client = make_client(proxy.url, batch_size=40)
    ids = [client.record("acme", "agent_tasks") for _ in range(120)]
    assert client.flush(timeout=30)
    assert set(stored()) == set(ids)
    assert UsageEvent.objects.count() == 120
    # The events of the lost answers were stored the first time; the client re-sent them
    # (same ids, same payloads) until an answer came, and the service said "duplicate".
    lost = {event_id for r in proxy.posts() if r["mode"] == "lost" for event_id in r["ids"]}
    assert lost  # the first batch at least
    stats = client.stats
    assert (stats["accepted"], stats["duplicates"], stats["conflicts"]) == (
        120 - len(lost),
        len(lost),
        0,
    )


def test_events_left_by_a_client_are_sent_by_the_next_one(
    make_client, customer, meters, spool_path
):
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    first = make_client(nowhere)
    expected = {first.record("acme", "agent_tasks"): ("agent_tasks", Decimal(1)) for _ in range(40)}
    first.close(timeout=0.5)  # gives up waiting: the events stay in the spool file
    assert spooled(spool_path) == 40

    second = make_client()  # the same spool, the service reachable: sent at start
    assert second.flush(timeout=20)
    assert stored() == expected
    assert spooled(spool_path) == 0
