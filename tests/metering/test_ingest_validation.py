"""Bad input to `POST /api/v1/events`: the exact status, the error named, and nothing stored.

Every case runs with one event already stored, so "nothing stored" means the table of usage
events is exactly as it was, not merely empty.
"""

from __future__ import annotations

import json
from decimal import Decimal
from unittest.mock import ANY

import pytest

from metering.authentication import INVALID_KEY_MESSAGE
from metering.models import UsageEvent
from tests.metering.helpers import (
    batch,
    iso,
    make_event,
    post_json,
    post_raw,
    recent,
    stored_row,
    stored_rows,
    with_raw,
)

pytestmark = pytest.mark.django_db

EVENT_ID_RULE = "must be 1-128 printable ASCII characters without spaces"
NOT_A_NUMBER = "must be a JSON number or a decimal string"
NOT_FINITE = "must be a finite number"
TOO_LARGE = "must not exceed 10^12"
NO_OFFSET = "must be RFC 3339 with an explicit offset, e.g. 2026-01-31T12:00:00Z"
NOT_A_STRING_TIMESTAMP = "must be an RFC 3339 string with an offset, e.g. 2026-01-31T12:00:00Z"
NOT_REAL = "is not a real date and time"
NOT_OBJECT = "must be a JSON object"
NOT_A_BODY_OBJECT = 'body must be a JSON object: one event, or {"events": [...]}'
TOO_DEEP = "JSON is nested too deeply"


def one(**overrides):
    """A single-event body, built at request time (timestamps are relative to now)."""
    return lambda: json.dumps(make_event(**overrides))


def raw_one(**raw_fields):
    """A single-event body with some fields spliced in as raw JSON text."""
    return lambda: with_raw(make_event(), **raw_fields)


def many(count, *, bad=None, **overrides):
    """A batch of `count` valid events `evt-0`...; event number `bad` gets the overrides."""

    def build():
        events = [make_event(event_id=f"evt-{i}") for i in range(count)]
        if bad is not None:
            events[bad] = make_event(event_id=f"evt-{bad}", **overrides)
        return json.dumps(batch(*events))

    return build


def nested_properties(depth):
    return raw_one(properties='{"chain": ' + "[" * depth + "]" * depth + "}")


def case(case_id, body, status, *errors, content_type="application/json", auth="service"):
    """One row of the table: `errors` are (index, field, message) in response order."""
    return pytest.param(body, content_type, auth, status, list(errors), id=case_id)


AUTH_FAILED = (None, "authorization", INVALID_KEY_MESSAGE)

CASES = [
    # --- event_id -----------------------------------------------------------------------------
    case("event_id-missing", one(event_id=...), 422, (0, "event_id", "is required")),
    case("event_id-null", one(event_id=None), 422, (0, "event_id", "is required")),
    case("event_id-empty", one(event_id=""), 422, (0, "event_id", EVENT_ID_RULE)),
    case("event_id-129-chars", one(event_id="e" * 129), 422, (0, "event_id", EVENT_ID_RULE)),
    case("event_id-non-ascii", one(event_id="évt-1"), 422, (0, "event_id", EVENT_ID_RULE)),
    case("event_id-space", one(event_id="evt 1"), 422, (0, "event_id", EVENT_ID_RULE)),
    case("event_id-tab", one(event_id="evt\t1"), 422, (0, "event_id", EVENT_ID_RULE)),
    case("event_id-control", one(event_id="evt\x071"), 422, (0, "event_id", EVENT_ID_RULE)),
    case("event_id-DEL", one(event_id="evt\x7f"), 422, (0, "event_id", EVENT_ID_RULE)),
    case("event_id-number", one(event_id=42), 422, (0, "event_id", "must be a string")),
    case("event_id-list", one(event_id=["a"]), 422, (0, "event_id", "must be a string")),
    # --- customer_id --------------------------------------------------------------------------
    case("customer-missing", one(customer_id=...), 422, (0, "customer_id", "is required")),
    case(
        "customer-unknown", one(customer_id="nobody"), 422, (0, "customer_id", "unknown customer")
    ),
    case(
        "customer-outside-scoped-key",
        one(customer_id="acme"),
        422,
        (0, "customer_id", "unknown customer"),
        auth="scoped",
    ),
    case(
        "customer-archived",
        one(customer_id="oldco"),
        422,
        (0, "customer_id", "customer is archived"),
    ),
    case(
        "customer-number",
        one(customer_id=7),
        422,
        (0, "customer_id", "must be a string of 1-128 printable characters"),
    ),
    # --- meter --------------------------------------------------------------------------------
    case("meter-missing", one(meter=...), 422, (0, "meter", "is required")),
    case("meter-unknown", one(meter="gpu_hours"), 422, (0, "meter", "unknown or inactive meter")),
    case(
        "meter-inactive",
        one(meter="retired_meter"),
        422,
        (0, "meter", "unknown or inactive meter"),
    ),
    # --- quantity -----------------------------------------------------------------------------
    case("quantity-negative", one(quantity=-1), 422, (0, "quantity", "must not be negative")),
    case(
        "quantity-negative-string",
        one(quantity="-0.5"),
        422,
        (0, "quantity", "must not be negative"),
    ),
    case("quantity-NaN-literal", raw_one(quantity="NaN"), 422, (0, "quantity", NOT_FINITE)),
    case("quantity-NaN-string", one(quantity="NaN"), 422, (0, "quantity", NOT_A_NUMBER)),
    case("quantity-Infinity", raw_one(quantity="Infinity"), 422, (0, "quantity", NOT_FINITE)),
    case(
        "quantity-minus-Infinity", raw_one(quantity="-Infinity"), 422, (0, "quantity", NOT_FINITE)
    ),
    case("quantity-Infinity-string", one(quantity="Infinity"), 422, (0, "quantity", NOT_A_NUMBER)),
    case("quantity-1e999", raw_one(quantity="1e999"), 422, (0, "quantity", TOO_LARGE)),
    case(
        "quantity-over-10^12",
        raw_one(quantity="1000000000000.000001"),
        422,
        (0, "quantity", TOO_LARGE),
    ),
    case(
        "quantity-over-10^12-string",
        one(quantity="1000000000000.000001"),
        422,
        (0, "quantity", TOO_LARGE),
    ),
    case(
        "quantity-7-decimals",
        raw_one(quantity="0.0000001"),
        422,
        (0, "quantity", "must have at most 6 decimal places"),
    ),
    case(
        "quantity-7-decimals-string",
        one(quantity="1.0000001"),
        422,
        (0, "quantity", "must have at most 6 decimal places"),
    ),
    case(
        "quantity-true",
        one(quantity=True),
        422,
        (0, "quantity", "must be a number, not a boolean"),
    ),
    case("quantity-object", one(quantity={"value": 1}), 422, (0, "quantity", NOT_A_NUMBER)),
    case("quantity-list", one(quantity=[1]), 422, (0, "quantity", NOT_A_NUMBER)),
    case("quantity-words", one(quantity="ten"), 422, (0, "quantity", NOT_A_NUMBER)),
    case("quantity-non-ascii-digit", one(quantity="\u0661"), 422, (0, "quantity", NOT_A_NUMBER)),
    case(
        "quantity-missing-on-sum-meter",
        one(quantity=...),
        422,
        (0, "quantity", "is required for this meter"),
    ),
    case(
        "quantity-exponent-beyond-decimal-range",
        raw_one(quantity="1e999999999999999999999"),
        400,
        (None, "body", "body holds a number out of range"),
    ),
    # --- timestamp ----------------------------------------------------------------------------
    case("timestamp-missing", one(timestamp=...), 422, (0, "timestamp", "is required")),
    case(
        "timestamp-no-offset",
        lambda: json.dumps(make_event(timestamp=iso(recent())[:-1])),
        422,
        (0, "timestamp", NO_OFFSET),
    ),
    case(
        "timestamp-date-only",
        lambda: json.dumps(make_event(timestamp=iso(recent())[:10])),
        422,
        (0, "timestamp", NO_OFFSET),
    ),
    case(
        "timestamp-epoch-number",
        lambda: json.dumps(make_event(timestamp=int(recent().timestamp()))),
        422,
        (0, "timestamp", NOT_A_STRING_TIMESTAMP),
    ),
    case(
        "timestamp-epoch-string",
        lambda: json.dumps(make_event(timestamp=str(int(recent().timestamp())))),
        422,
        (0, "timestamp", NO_OFFSET),
    ),
    case(
        "timestamp-too-old",
        lambda: json.dumps(make_event(timestamp=iso(recent(days=35, minutes=1)))),
        422,
        (0, "timestamp", "is older than the accepted window (35 days)"),
    ),
    case(
        "timestamp-too-far-ahead",
        lambda: json.dumps(make_event(timestamp=iso(recent(minutes=-6)))),
        422,
        (0, "timestamp", "must not be more than 300 s in the future"),
    ),
    case(
        "timestamp-february-30",
        one(timestamp="2026-02-30T12:00:00Z"),
        422,
        (0, "timestamp", NOT_REAL),
    ),
    case(
        "timestamp-hour-25", one(timestamp="2026-03-01T25:00:00Z"), 422, (0, "timestamp", NOT_REAL)
    ),
    case(
        "timestamp-offset-24h",
        one(timestamp="2026-03-01T12:00:00+24:00"),
        422,
        (0, "timestamp", NOT_REAL),
    ),
    case(
        "timestamp-year-0",
        one(timestamp="0000-01-01T00:00:00Z"),
        422,
        (0, "timestamp", NOT_REAL),
    ),
    case(
        "timestamp-year-9999-negative-offset",
        one(timestamp="9999-12-31T23:59:59-23:59"),
        422,
        (0, "timestamp", NOT_REAL),
    ),
    case(
        "timestamp-non-ascii-digits",
        one(timestamp="\u0662\u0660\u0662\u0666-01-01T00:00:00Z"),
        422,
        (0, "timestamp", NO_OFFSET),
    ),
    # --- properties ---------------------------------------------------------------------------
    case("properties-list", one(properties=["a"]), 422, (0, "properties", NOT_OBJECT)),
    case("properties-string", one(properties="a=1"), 422, (0, "properties", NOT_OBJECT)),
    case(
        "properties-over-4KiB",
        one(properties={"note": "x" * 4090}),
        422,
        (0, "properties", "must be at most 4096 bytes serialized"),
    ),
    case(
        "properties-51-keys",
        one(properties={f"k{i}": i for i in range(51)}),
        422,
        (0, "properties", "must have at most 50 keys"),
    ),
    case(
        "properties-NaN",
        raw_one(properties='{"score": NaN}'),
        422,
        (0, "properties", "must not contain NaN or Infinity"),
    ),
    case(
        "properties-nested-Infinity",
        raw_one(properties='{"scores": [1, {"x": -Infinity}]}'),
        422,
        (0, "properties", "must not contain NaN or Infinity"),
    ),
    case(
        "properties-NUL",
        one(properties={"note": "a\x00b"}),
        422,
        (0, "properties", "must not contain NUL characters"),
    ),
    case(
        "properties-NUL-in-key",
        one(properties={"a\x00": "b"}),
        422,
        (0, "properties", "must not contain NUL characters"),
    ),
    case(
        "properties-lone-surrogate",
        raw_one(properties='{"note": "\\ud800"}'),
        422,
        (0, "properties", "must be valid Unicode (no lone surrogates)"),
    ),
    case(
        "properties-nested-700-levels",
        nested_properties(700),
        422,
        (0, "properties", "is nested too deeply"),
    ),
    case(
        "properties-nested-100000-levels",
        nested_properties(100_000),
        400,
        (None, "body", TOO_DEEP),
    ),
    # --- the event object ---------------------------------------------------------------------
    case("event-unknown-field", one(colour="red"), 422, (0, "colour", "unknown field")),
    case(
        "event-unknown-field-lone-surrogate",
        raw_one(**{"\ud800": "1"}),
        422,
        (0, "\\ud800", "unknown field"),
    ),
    case(
        "event-empty-object",
        lambda: "{}",
        422,
        (0, "event_id", "is required"),
        (0, "customer_id", "is required"),
        (0, "meter", "is required"),
        (0, "timestamp", "is required"),
    ),
    # --- batches ------------------------------------------------------------------------------
    case(
        "batch-of-0",
        lambda: '{"events": []}',
        422,
        (None, "events", "must hold 1 to 1000 events, got 0"),
    ),
    case(
        "batch-of-1001",
        many(1001),
        422,
        (None, "events", "must hold 1 to 1000 events, got 1001"),
    ),
    case(
        "batch-events-not-a-list",
        lambda: json.dumps({"events": make_event()}),
        422,
        (None, "events", "must be a list of event objects"),
    ),
    case(
        "batch-events-null",
        lambda: '{"events": null}',
        422,
        (None, "events", "must be a list of event objects"),
    ),
    case(
        "batch-element-not-an-object",
        lambda: json.dumps(batch(make_event(), "evt-2")),
        422,
        (1, "event", NOT_OBJECT),
    ),
    case(
        "batch-unknown-field-beside-events",
        lambda: json.dumps({"events": [make_event()], "source": "fleet"}),
        422,
        (None, "source", 'unknown field next to "events"'),
    ),
    case(
        "batch-unknown-field-lone-surrogate",
        lambda: '{"events": [' + json.dumps(make_event()) + '], "\\udfff": 1}',
        422,
        (None, "\\udfff", 'unknown field next to "events"'),
    ),
    case(
        "batch-of-10-bad-index-7",
        many(10, bad=7, quantity=-3),
        422,
        (7, "quantity", "must not be negative"),
    ),
    case(
        "batch-of-10-unknown-customer-index-7",
        many(10, bad=7, customer_id="nobody"),
        422,
        (7, "customer_id", "unknown customer"),
    ),
    case(
        "batch-two-bad-events",
        lambda: json.dumps(
            batch(
                make_event(event_id="a"),
                make_event(event_id="b", quantity="x"),
                make_event(event_id="c"),
                make_event(event_id="d", meter="no such meter", properties=[]),
            )
        ),
        422,
        (1, "quantity", NOT_A_NUMBER),
        (3, "meter", "must be a meter code (a string)"),
        (3, "properties", NOT_OBJECT),
    ),
    case(
        "batch-unknown-customer-and-meter",
        lambda: json.dumps(
            batch(
                make_event(event_id="a", customer_id="nobody"),
                make_event(event_id="b"),
                make_event(event_id="c", meter="gpu_hours"),
            )
        ),
        422,
        (0, "customer_id", "unknown customer"),
        (2, "meter", "unknown or inactive meter"),
    ),
    # --- the body -----------------------------------------------------------------------------
    case("body-not-json", lambda: "event_id=1", 400, (None, "body", ANY)),
    case("body-truncated-json", lambda: '{"event_id": "e1"', 400, (None, "body", ANY)),
    case("body-empty", lambda: b"", 400, (None, "body", ANY)),
    case(
        "body-json-array",
        lambda: json.dumps([make_event()]),
        400,
        (None, "body", NOT_A_BODY_OBJECT),
    ),
    case("body-json-string", lambda: '"evt-1"', 400, (None, "body", NOT_A_BODY_OBJECT)),
    case("body-json-null", lambda: "null", 400, (None, "body", NOT_A_BODY_OBJECT)),
    case("body-json-number", lambda: "42", 400, (None, "body", NOT_A_BODY_OBJECT)),
    case(
        "body-invalid-utf8",
        lambda: json.dumps(make_event()).encode().replace(b"a1", b"\xff\xfe"),
        400,
        (None, "body", ANY),
    ),
    case(
        "body-nested-100000-levels",
        lambda: "[" * 100_000 + "]" * 100_000,
        400,
        (None, "body", TOO_DEEP),
    ),
    case(
        "content-type-text-plain",
        lambda: json.dumps(make_event()),
        415,
        (None, "content-type", "Content-Type must be application/json"),
        content_type="text/plain",
    ),
    case(
        "content-type-form-encoded",
        lambda: "event_id=evt-new&customer_id=acme&meter=llm_tokens&quantity=1",
        415,
        (None, "content-type", "Content-Type must be application/json"),
        content_type="application/x-www-form-urlencoded",
    ),
    case(
        "body-over-1MiB",
        lambda: json.dumps(make_event(properties={"pad": "x" * (1024 * 1024)})),
        413,
        (None, None, "body must be at most 1048576 bytes"),
    ),
    # --- authentication -----------------------------------------------------------------------
    case("auth-missing", one(), 401, AUTH_FAILED, auth="none"),
    case("auth-wrong-scheme", one(), 401, AUTH_FAILED, auth="basic"),
    case("auth-unknown-key", one(), 401, AUTH_FAILED, auth="unknown"),
    case("auth-revoked-key", one(), 401, AUTH_FAILED, auth="revoked"),
    case("auth-expired-key", one(), 401, AUTH_FAILED, auth="expired"),
]


@pytest.mark.usefixtures("archived_customer", "inactive_meter")
@pytest.mark.parametrize(("body", "content_type", "auth", "status", "errors"), CASES)
def test_bad_input_is_refused_and_nothing_is_stored(
    clients, stored_event, body, content_type, auth, status, errors
):
    before = stored_rows()

    response = post_raw(clients[auth], body(), content_type=content_type)

    assert response.status_code == status, response.content
    assert response.json() == {
        "errors": [
            {"index": index, "field": field, "message": message} for index, field, message in errors
        ]
    }
    assert stored_rows() == before
    assert UsageEvent.objects.count() == 1


def test_table_covers_at_least_35_cases():
    assert len(CASES) >= 35


@pytest.mark.usefixtures("stored_event")
def test_unknown_revoked_and_expired_keys_get_identical_responses(clients):
    responses = [
        post_json(clients[name], make_event()) for name in ("unknown", "revoked", "expired")
    ]

    assert [r.status_code for r in responses] == [401, 401, 401]
    assert len({r.content for r in responses}) == 1
    assert {r["WWW-Authenticate"] for r in responses} == {'Bearer realm="api"'}
    assert UsageEvent.objects.count() == 1


@pytest.mark.usefixtures("stored_event")
def test_out_of_scope_customer_reads_exactly_like_an_unknown_one(clients):
    out_of_scope = post_json(clients["scoped"], make_event(customer_id="acme"))
    unknown = post_json(clients["scoped"], make_event(customer_id="nobody"))

    assert out_of_scope.status_code == unknown.status_code == 422
    assert out_of_scope.content == unknown.content
    assert UsageEvent.objects.count() == 1


@pytest.mark.usefixtures("stored_event")
def test_scoped_key_may_post_for_its_own_customer(clients):
    response = post_json(clients["scoped"], make_event(customer_id="globex"))

    assert response.status_code == 202, response.content
    assert [row["customer__external_id"] for row in stored_rows()] == ["acme", "globex"]


@pytest.mark.parametrize("quantity", [..., None])
def test_quantity_is_optional_on_a_count_meter_and_defaults_to_one(api, customer, meters, quantity):
    response = post_json(api, make_event(meter="agent_tasks", quantity=quantity))

    assert response.status_code == 202, response.content
    assert response.json()["accepted"] == 1
    row = stored_row("evt-new")
    assert row["meter__code"] == "agent_tasks"
    assert row["quantity"] == Decimal("1.000000")


def _boundary(case_id, payload, expected_rows):
    return pytest.param(payload, expected_rows, id=case_id)


BOUNDARIES = [
    _boundary("event_id-128-chars", lambda: make_event(event_id="e" * 128), 1),
    _boundary(
        "event_id-all-punctuation",
        lambda: make_event(event_id="!#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\""),
        1,
    ),
    _boundary("quantity-zero", lambda: make_event(quantity=0), 1),
    _boundary("quantity-10^12", lambda: make_event(quantity=10**12), 1),
    _boundary("quantity-6-decimals", lambda: make_event(quantity="0.000001"), 1),
    _boundary("quantity-trailing-zeros", lambda: make_event(quantity="2.5000000000"), 1),
    _boundary(
        "timestamp-35-days-old", lambda: make_event(timestamp=iso(recent(days=34, hours=23))), 1
    ),
    _boundary(
        "timestamp-4-minutes-ahead", lambda: make_event(timestamp=iso(recent(minutes=-4))), 1
    ),
    _boundary(
        "properties-4096-bytes",
        # {"note":"..."} is 11 bytes around the value.
        lambda: make_event(properties={"note": "x" * (4096 - 11)}),
        1,
    ),
    _boundary(
        "properties-50-keys", lambda: make_event(properties={f"k{i}": i for i in range(50)}), 1
    ),
    _boundary("properties-null", lambda: make_event(properties=None), 1),
    _boundary(
        "properties-backslash-u0000-text",
        lambda: make_event(properties={"path": "C:\\u0000\\x"}),
        1,
    ),
    _boundary(
        "batch-of-1000",
        lambda: batch(*(make_event(event_id=f"evt-{i}") for i in range(1000))),
        1000,
    ),
]


@pytest.mark.parametrize(("payload", "expected_rows"), BOUNDARIES)
def test_values_on_the_boundary_are_accepted(api, customer, meters, payload, expected_rows):
    response = post_json(api, payload())

    assert response.status_code == 202, response.content
    assert response.json()["accepted"] == expected_rows
    assert UsageEvent.objects.count() == expected_rows
