"""The fast paths of ingestion parsing give exactly what the standard library gives.

Fingerprints are computed over the canonical properties text, and quantities must stay exact:
a fast path that changed either would turn a re-sent event into a conflict, or bill a rounded
quantity.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metering import event_parsing
from metering.parsers import FastJSONRenderer

BODIES = [
    b'{"events": [{"event_id": "a", "quantity": 1.50}, {"quantity": 12345678901234567890}]}',
    b'{"quantity": 1E2, "x": -0.0, "y": 1.0e-7, "z": 0.1000000000000000000001}',
    b'{"a": 1, "a": 2}',
    '{"name": "caf\u00e9 \u2603", "t": "\\u00e9\\n\\t"}'.encode(),
    b'\xef\xbb\xbf{"bom": true}',
    '{"utf16": 1}'.encode("utf-16"),
    b'{"nan": NaN, "inf": -Infinity}',
    b'{"lone": "\\ud800"}',
]
INVALID = [b"", b"{", b'{"a": 1} trailing', b"\xff\xfe\xfd", b"[" * 100_000 + b"]" * 100_000]


def _stdlib(raw: bytes):
    return json.loads(raw, parse_float=Decimal, parse_constant=event_parsing._NonFinite)


def _typed(value):
    """The decoded document with each leaf's type spelled out, so 1, 1.0 and True differ."""
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item) for item in value]
    if isinstance(value, event_parsing._NonFinite):
        return ("non-finite", value.literal)
    return (type(value).__name__, str(value))


@pytest.mark.parametrize("raw", BODIES)
def test_decode_body_equals_the_standard_library(raw):
    assert _typed(event_parsing.decode_body(raw)) == _typed(_stdlib(raw))


def test_decode_body_keeps_decimals_exact():
    body = event_parsing.decode_body(b'{"q": 0.1000001, "r": 123.456000}')
    assert body == {"q": Decimal("0.1000001"), "r": Decimal("123.456000")}
    assert type(body["q"]) is Decimal


@pytest.mark.parametrize("raw", INVALID)
def test_invalid_bodies_are_still_body_errors(raw):
    with pytest.raises(event_parsing.BodyError):
        event_parsing.decode_body(raw)


@pytest.mark.parametrize(
    "properties",
    [
        {"agent_id": "researcher", "model": "small", "n": 3, "ok": True, "none": None},
        {"z": "last", "a": "first", "é": "caf\u00e9 \u2603", "ctl": '\x01\x1f\n\t"\\'},
        {"big": 10**30, "neg": -5},
        {"nested": {"b": [1, 2, {"c": "d"}], "a": Decimal("1.5")}, "f": Decimal("1E+16")},
        {"line": "\u2028\u2029", "quote": "'\"'"},
    ],
)
def test_canonical_properties_text_is_unchanged(properties):
    _, text, error = event_parsing._parse_properties(properties)
    assert error is None
    expected = json.dumps(
        event_parsing._jsonable(properties),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    assert text == expected


def test_renderer_output_parses_to_the_same_document():
    data = {
        "accepted": 1,
        "duplicates": 0,
        "conflicts": 0,
        "events": [{"event_id": "caf\u00e9-\u2028", "status": "accepted"}],
        "customers": {"acme": {"status": "active", "remaining_minor": None}},
    }
    rendered = FastJSONRenderer().render(data, "application/json", {})
    assert json.loads(rendered) == data
    assert b" " not in rendered.replace(b"caf", b"")  # compact, as DRF renders
    assert FastJSONRenderer().render(None) == b""


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-26T21:00:00Z",
        "2026-11-26T21:00:00.1Z",
        "2026-11-26T21:00:00.123456Z",
        "2026-11-25T23:59:59.999999Z",
        "2026-11-26T21:00:00.1234567Z",  # more than 6 digits: the general path, truncated
        "2026-11-26t21:00:00z",
        "2026-11-26 21:00:00+02:30",
    ],
)
def test_timestamp_fast_path_gives_the_general_instant(text):
    now = datetime(2026, 11, 26, 22, tzinfo=UTC)
    parsed, error = event_parsing._parse_timestamp(
        text, now=now, max_age=timedelta(days=35), max_future=timedelta(minutes=5)
    )
    assert error is None
    match = event_parsing._RFC3339_RE.fullmatch(text)
    assert parsed == event_parsing._instant(match)
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text", ["2026-02-30T21:00:00Z", "2026-11-26T24:00:00Z", "2026-11-26T21:00:60Z"]
)
def test_impossible_timestamps_are_still_refused(text):
    now = datetime(2026, 11, 26, 22, tzinfo=UTC)
    assert event_parsing._parse_timestamp(
        text, now=now, max_age=timedelta(days=35), max_future=timedelta(minutes=5)
    ) == (None, "is not a real date and time")
