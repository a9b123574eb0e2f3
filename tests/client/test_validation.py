"""Client-side validation: what the service would refuse fails at record(), nothing spooled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from agent_billing import Client, InvalidEvent

from tests.client.proxy import free_port


@pytest.fixture
def client(tmp_path):
    client = Client(f"http://127.0.0.1:{free_port()}", "mk_test", spool_path=tmp_path / "s.sqlite3")
    yield client
    try:
        assert client.pending() == 0  # nothing invalid reached the spool
    finally:
        client.close(timeout=0)


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"quantity": 0.1}, TypeError, "float"),
        ({"quantity": True}, TypeError, "bool"),
        ({"quantity": "1.0000001"}, InvalidEvent, "6 decimal places"),
        ({"quantity": "1e3x"}, InvalidEvent, "decimal string"),
        ({"quantity": Decimal("NaN")}, InvalidEvent, "finite"),
        ({"quantity": -1}, InvalidEvent, "negative"),
        ({"quantity": 10**12 + 1}, InvalidEvent, "10\\^12"),
        ({"event_id": "has space"}, InvalidEvent, "printable ASCII"),
        ({"event_id": ""}, InvalidEvent, "printable ASCII"),
        ({"event_id": "x" * 129}, InvalidEvent, "printable ASCII"),
        ({"event_id": "caf\u00e9"}, InvalidEvent, "printable ASCII"),
        ({"customer_id": ""}, InvalidEvent, "customer_id"),
        ({"meter": "bad meter"}, InvalidEvent, "meter code"),
        ({"properties": {"x": float("inf")}}, InvalidEvent, "NaN or Infinity"),
        ({"properties": {"k": "v" * 5000}}, InvalidEvent, "4096 bytes"),
        ({"properties": {f"k{i}": i for i in range(51)}}, InvalidEvent, "50 keys"),
        ({"properties": {"x": "\x00"}}, InvalidEvent, "NUL"),
        ({"properties": {"x": "\ud800"}}, InvalidEvent, "surrogates"),
        ({"properties": {"when": datetime.now(UTC)}}, TypeError, "JSON values"),
        ({"properties": ["not", "a", "dict"]}, TypeError, "dict"),
        ({"timestamp": datetime(2026, 1, 1, 12, 0)}, InvalidEvent, "aware"),
        ({"timestamp": "2026-01-01 12:00:00"}, InvalidEvent, "RFC 3339"),
        ({"timestamp": timedelta(minutes=6)}, InvalidEvent, "future"),  # from now
        ({"timestamp": -timedelta(days=36)}, InvalidEvent, "older"),
    ],
)
def test_invalid_events_fail_fast(client, fields, error, match):
    event = {"customer_id": "acme", "meter": "llm_tokens", "quantity": 1, **fields}
    if isinstance(event.get("timestamp"), timedelta):  # relative to now, not to collection
        event["timestamp"] = datetime.now(UTC) + event["timestamp"]
    with pytest.raises(error, match=match):
        client.record(**event)


def test_valid_quantities_are_sent_as_exact_decimal_strings(client):
    cases = {
        1500: "1500",
        Decimal("0.25"): "0.25",
        "0.123456": "0.123456",
        Decimal("1E+3"): "1000",
        "2.500000": "2.5",
        0: "0",
    }
    for quantity, text in cases.items():
        client._check_process()
        event = client._build_event(
            customer_id="acme",
            meter="llm_tokens",
            quantity=quantity,
            properties=None,
            event_id=None,
            timestamp=None,
        )
        assert event["quantity"] == text
