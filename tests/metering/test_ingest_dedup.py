"""Exactly-once ingestion: accepted, duplicate and conflict, and what is stored exactly."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone as django_timezone

from metering.models import UsageEvent
from tests.metering.helpers import (
    batch,
    iso,
    make_event,
    post_json,
    post_raw,
    recent,
    statuses,
    stored_row,
    stored_rows,
    with_raw,
)

pytestmark = pytest.mark.django_db


ACTIVE = {"status": "active", "remaining_minor": None}  # no budget cap in these tests


def _body(*pairs: tuple[str, str], customers: tuple[str, ...] = ("acme",)) -> dict:
    """The expected 202/409 body for (event_id, status) pairs in request order."""
    counts = {"accepted": 0, "duplicate": 0, "conflict": 0}
    for _, status in pairs:
        counts[status] += 1
    return {
        "accepted": counts["accepted"],
        "duplicates": counts["duplicate"],
        "conflicts": counts["conflict"],
        "events": [{"event_id": event_id, "status": status} for event_id, status in pairs],
        "customers": {customer_id: ACTIVE for customer_id in customers},
    }


@pytest.fixture
def moment():
    """A fixed instant an hour ago, as an aware UTC datetime with whole seconds."""
    return recent()


def test_the_same_batch_twice_is_stored_once(api, customer, meters):
    events = [make_event(event_id=f"evt-{i}", quantity=i) for i in range(5)]

    first = post_json(api, batch(*events))
    rows = stored_rows()
    second = post_json(api, batch(*events))

    assert first.status_code == second.status_code == 202
    assert first.json() == _body(*((f"evt-{i}", "accepted") for i in range(5)))
    assert second.json() == _body(*((f"evt-{i}", "duplicate") for i in range(5)))
    assert stored_rows() == rows
    assert len(rows) == 5


def test_dedup_across_batches(api, customer, meters):
    post_json(api, batch(make_event(event_id="a"), make_event(event_id="b")))

    response = post_json(api, batch(make_event(event_id="b"), make_event(event_id="c")))

    assert response.status_code == 202
    assert response.json() == _body(("b", "duplicate"), ("c", "accepted"))
    assert [row["event_id"] for row in stored_rows()] == ["a", "b", "c"]


def test_same_event_id_with_a_different_timestamp_is_a_conflict_and_keeps_the_stored_row(
    api, customer, meters, moment
):
    post_json(api, make_event(timestamp=iso(moment)))
    original = stored_row("evt-new")

    response = post_json(api, make_event(timestamp=iso(moment - timedelta(days=2))))

    assert response.status_code == 409
    assert response.json() == _body(("evt-new", "conflict"))
    assert stored_row("evt-new") == original
    assert original["timestamp"] == moment
    assert UsageEvent.objects.count() == 1


PAYLOADS = [
    # (id, first overrides, repeat overrides, expected status of the repeat)
    ("quantity-same", {"quantity": 1.5}, {"quantity": 1.5}, "duplicate"),
    ("quantity-string-1.50-vs-1.5", {"quantity": 1.5}, {"quantity": "1.50"}, "duplicate"),
    ("quantity-6-places-vs-1.5", {"quantity": "1.5"}, {"quantity": "1.500000"}, "duplicate"),
    ("quantity-exponent-vs-integer", {"quantity": 1500}, {"quantity": "1.5e3"}, "duplicate"),
    ("quantity-different", {"quantity": 1.5}, {"quantity": 1.6}, "conflict"),
    ("quantity-one-millionth-more", {"quantity": 1}, {"quantity": "1.000001"}, "conflict"),
    ("meter-different", {"meter": "llm_tokens"}, {"meter": "agent_minutes"}, "conflict"),
    (
        "meter-count-default-vs-explicit-1",
        {"meter": "agent_tasks", "quantity": ...},
        {"meter": "agent_tasks", "quantity": 1},
        "duplicate",
    ),
    (
        "meter-count-default-vs-explicit-2",
        {"meter": "agent_tasks", "quantity": ...},
        {"meter": "agent_tasks", "quantity": 2},
        "conflict",
    ),
    (
        "properties-reordered",
        {"properties": {"a": 1, "b": "x"}},
        {"properties": {"b": "x", "a": 1}},
        "duplicate",
    ),
    ("properties-empty-vs-absent", {"properties": {}}, {"properties": ...}, "duplicate"),
    ("properties-different-value", {"properties": {"a": 1}}, {"properties": {"a": 2}}, "conflict"),
    (
        "properties-extra-key",
        {"properties": {"a": 1}},
        {"properties": {"a": 1, "b": 1}},
        "conflict",
    ),
    ("properties-vs-absent", {"properties": {"a": 1}}, {"properties": ...}, "conflict"),
    ("properties-1-vs-1.0", {"properties": {"a": 1}}, {"properties": {"a": 1.0}}, "conflict"),
    ("timestamp-same", {"timestamp": 0}, {"timestamp": 0}, "duplicate"),
    ("timestamp-same-instant-other-offset", {"timestamp": 0}, {"timestamp": "+02:00"}, "duplicate"),
    ("timestamp-one-second-later", {"timestamp": 0}, {"timestamp": 1}, "conflict"),
    ("timestamp-one-microsecond-later", {"timestamp": 0}, {"timestamp": 0.000001}, "conflict"),
]


def _resolve_timestamp(overrides: dict, moment) -> dict:
    """`timestamp` in PAYLOADS is seconds after `moment`, or an offset to express it in."""
    value = overrides.get("timestamp")
    if value is None:
        # Both posts carry the same instant, or a second boundary between them would make
        # the repeat a conflict.
        return {**overrides, "timestamp": iso(moment)}
    if isinstance(value, str):
        sign = 1 if value[0] == "+" else -1
        hours, minutes = (int(part) for part in value[1:].split(":"))
        zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
        text = moment.astimezone(zone).isoformat()
    else:
        text = iso(moment + timedelta(seconds=value))
    return {**overrides, "timestamp": text}


@pytest.mark.parametrize(
    ("first", "repeat", "expected"),
    [
        pytest.param(first, repeat, expected, id=case_id)
        for case_id, first, repeat, expected in PAYLOADS
    ],
)
def test_a_repeated_event_id_is_a_duplicate_only_when_the_payload_is_the_same(
    api, customer, meters, moment, first, repeat, expected
):
    assert post_json(api, make_event(**_resolve_timestamp(first, moment))).status_code == 202
    original = stored_rows()

    response = post_json(api, make_event(**_resolve_timestamp(repeat, moment)))

    assert response.status_code == (202 if expected == "duplicate" else 409), response.content
    assert response.json() == _body(("evt-new", expected))
    assert stored_rows() == original
    assert len(original) == 1


def test_json_number_and_decimal_string_of_the_same_value_are_duplicates(api, customer, meters):
    # The literal 1.5 in raw JSON (never a float on the way in) against the string "1.50".
    first = post_raw(api, with_raw(make_event(), quantity="1.5"))
    repeat = post_json(api, make_event(quantity="1.50"))

    assert first.json() == _body(("evt-new", "accepted"))
    assert repeat.status_code == 202
    assert repeat.json() == _body(("evt-new", "duplicate"))
    assert stored_row("evt-new")["quantity"] == Decimal("1.5")


def test_an_event_built_again_after_a_second_boundary_is_still_a_duplicate(api, customer, meters):
    # The repeat is built in the next second of the clock: its default timestamp must not move
    # (it once did, and the repeat was a conflict whenever a request crossed a second).
    start = django_timezone.now().replace(microsecond=999_900)
    with time_machine.travel(start, tick=False):
        first = post_json(api, make_event())
    with time_machine.travel(start + timedelta(milliseconds=1), tick=False):
        repeat = post_json(api, make_event())

    assert first.json() == _body(("evt-new", "accepted"))
    assert repeat.status_code == 202
    assert repeat.json() == _body(("evt-new", "duplicate"))
    assert UsageEvent.objects.count() == 1


def test_the_same_id_twice_in_one_batch_is_accepted_then_duplicate(api, customer, meters):
    response = post_json(api, batch(make_event(), make_event(), make_event()))

    assert response.status_code == 202
    assert response.json() == _body(
        ("evt-new", "accepted"), ("evt-new", "duplicate"), ("evt-new", "duplicate")
    )
    assert UsageEvent.objects.count() == 1


def test_the_same_id_with_another_payload_in_one_batch_is_accepted_then_conflict(
    api, customer, meters
):
    response = post_json(
        api,
        batch(
            make_event(quantity=10),
            make_event(quantity=11),
            make_event(event_id="other"),
            make_event(quantity=10),
        ),
    )

    assert response.status_code == 202
    assert response.json() == _body(
        ("evt-new", "accepted"),
        ("evt-new", "conflict"),
        ("other", "accepted"),
        ("evt-new", "duplicate"),
    )
    assert stored_row("evt-new")["quantity"] == Decimal(10)
    assert UsageEvent.objects.count() == 2


def test_repeats_of_a_stored_event_in_one_batch_are_judged_against_the_stored_one(
    api, customer, meters
):
    post_json(api, make_event(quantity=10))

    response = post_json(api, batch(make_event(quantity=11), make_event(quantity=10)))

    assert response.status_code == 202
    assert response.json() == _body(("evt-new", "conflict"), ("evt-new", "duplicate"))
    assert stored_row("evt-new")["quantity"] == Decimal(10)


def test_the_same_event_id_for_two_customers_is_two_events(api, customer, other_customer, meters):
    response = post_json(
        api,
        batch(
            make_event(customer_id="acme", quantity=1),
            make_event(customer_id="globex", quantity=2),
        ),
    )

    assert response.status_code == 202
    assert response.json() == _body(
        ("evt-new", "accepted"), ("evt-new", "accepted"), customers=("acme", "globex")
    )
    assert [(row["customer__external_id"], row["quantity"]) for row in stored_rows()] == [
        ("acme", Decimal(1)),
        ("globex", Decimal(2)),
    ]


def test_a_single_event_conflict_is_409_with_the_ingestion_body(api, customer, meters):
    post_json(api, make_event(quantity=1))

    response = post_json(api, make_event(quantity=2))

    assert response.status_code == 409
    assert response.json() == {
        "accepted": 0,
        "duplicates": 0,
        "conflicts": 1,
        "events": [{"event_id": "evt-new", "status": "conflict"}],
        "customers": {"acme": {"status": "active", "remaining_minor": None}},
    }


def test_a_single_event_sent_as_a_batch_of_one_conflicts_with_202(api, customer, meters):
    post_json(api, make_event(quantity=1))

    response = post_json(api, batch(make_event(quantity=2)))

    assert response.status_code == 202
    assert response.json() == _body(("evt-new", "conflict"))


def test_a_batch_with_a_conflict_is_202_with_every_count(api, customer, meters):
    post_json(api, batch(make_event(event_id="kept", quantity=5), make_event(event_id="same")))

    response = post_json(
        api,
        batch(
            make_event(event_id="kept", quantity=6),
            make_event(event_id="fresh"),
            make_event(event_id="same"),
        ),
    )

    assert response.status_code == 202
    assert response.json() == {
        "accepted": 1,
        "duplicates": 1,
        "conflicts": 1,
        "events": [
            {"event_id": "kept", "status": "conflict"},
            {"event_id": "fresh", "status": "accepted"},
            {"event_id": "same", "status": "duplicate"},
        ],
        "customers": {"acme": {"status": "active", "remaining_minor": None}},
    }
    assert stored_row("kept")["quantity"] == Decimal(5)
    assert UsageEvent.objects.count() == 3


def test_response_events_are_in_request_order(api, customer, meters):
    post_json(api, batch(make_event(event_id="m"), make_event(event_id="b")))
    ids = ["z", "m", "a", "y", "b", "c"]

    response = post_json(api, batch(*(make_event(event_id=event_id) for event_id in ids)))

    assert statuses(response) == [
        ("z", "accepted"),
        ("m", "duplicate"),
        ("a", "accepted"),
        ("y", "accepted"),
        ("b", "duplicate"),
        ("c", "accepted"),
    ]


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ('"999999999999.999999"', Decimal("999999999999.999999")),
        ("999999999999.999999", Decimal("999999999999.999999")),
        ("1000000000000", Decimal("1000000000000")),
        ('"0.000001"', Decimal("0.000001")),
        ("0.1", Decimal("0.1")),
        ("0.30000000000000004e0", None),  # more than 6 places: refused, never rounded
        ("12345.678901", Decimal("12345.678901")),
        ('"7"', Decimal(7)),
        ("0", Decimal(0)),
    ],
)
def test_quantities_are_stored_exactly(api, customer, meters, sent, stored):
    response = post_raw(api, with_raw(make_event(), quantity=sent))

    if stored is None:
        assert response.status_code == 422
        assert UsageEvent.objects.count() == 0
        return
    assert response.status_code == 202, response.content
    quantity = stored_row("evt-new")["quantity"]
    assert quantity == stored
    assert quantity.as_tuple().exponent == -6
    assert str(quantity) == f"{stored:.6f}"


def test_a_timestamp_with_an_offset_is_stored_as_the_same_utc_instant(api, customer, meters):
    instant = recent(hours=2)
    local = instant.astimezone(timezone(timedelta(hours=5, minutes=30)))
    text = local.strftime("%Y-%m-%dT%H:%M:%S+05:30")

    response = post_json(api, make_event(timestamp=text))

    assert response.status_code == 202, response.content
    stored = stored_row("evt-new")["timestamp"]
    assert stored == instant
    assert stored.utcoffset() == timedelta(0)
    assert stored.astimezone(UTC).replace(tzinfo=None) == (
        local.replace(tzinfo=None) - timedelta(hours=5, minutes=30)
    )


def test_fractional_seconds_are_kept_to_the_microsecond(api, customer, meters, moment):
    text = iso(moment).replace("Z", ".123456789Z")

    assert post_json(api, make_event(timestamp=text)).status_code == 202
    again = post_json(api, make_event(timestamp=iso(moment).replace("Z", ".123456Z")))

    assert stored_row("evt-new")["timestamp"] == moment + timedelta(microseconds=123456)
    assert again.json() == _body(("evt-new", "duplicate"))


def test_the_stored_row_records_its_key_and_properties(api, service_key, customer, meters):
    properties = {
        "model": "small",
        "agent_id": "r1",
        "path": "C:\\u0000",  # a backslash and "u0000", not a NUL
        "emoji": "\U0001f600",
        "nested": {"a": [1, 2.5, None, True]},
    }
    response = post_json(api, make_event(properties=properties))

    assert response.status_code == 202
    row = UsageEvent.objects.filter(event_id="evt-new").values(
        "api_key_id", "properties", "received_at"
    )[0]
    assert row["api_key_id"] == service_key[0].pk
    assert row["properties"] == properties
    assert row["received_at"] is not None
