"""Parsing and validating the ingestion request body, without the ORM.

The batch path is hot (1,000 events a request), so events are checked by plain functions
into small immutable records, and every problem is reported as a FieldError naming the
event's index and field. Nothing here touches the database; customer and meter existence
are checked by the service in two set-based queries.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from json.encoder import encode_basestring as _json_string
from typing import Any

import msgspec

from billing_project.errors import BadRequest

MAX_BATCH = 1000
MAX_EVENT_ID_LENGTH = 128
MAX_QUANTITY = Decimal(10) ** 12
QUANTITY_PLACES = 6
QUANTUM = Decimal(1).scaleb(-QUANTITY_PLACES)
MAX_PROPERTIES_BYTES = 4096
MAX_PROPERTIES_KEYS = 50
EVENT_FIELDS = frozenset(
    {"event_id", "customer_id", "meter", "quantity", "timestamp", "properties"}
)

_EVENT_ID_RE = re.compile(r"[\x21-\x7e]{1,128}")
_METER_CODE_RE = re.compile(r"[-a-zA-Z0-9_]{1,64}")
_DECIMAL_STRING_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
# RFC 3339 date-time with an explicit offset ("Z" or +hh:mm); fractions up to nanoseconds.
_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)

# A \u0000 escape in JSON text (PostgreSQL's jsonb refuses NUL): its backslash is not itself
# escaped, so it follows an even number of backslashes. A literal "\\u0000" is fine.
_JSON_NUL_RE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class BodyError(BadRequest):
    """The body as a whole is unusable (400): not JSON, or not a JSON object."""

    code = "malformed_body"

    def __init__(self, message: str) -> None:
        super().__init__(message, field="body")


@dataclass(frozen=True, slots=True)
class FieldError:
    index: int | None
    field: str
    message: str


@dataclass(frozen=True, slots=True)
class EventInput:
    """One syntactically valid event; `quantity` is None when the client left it out."""

    index: int
    event_id: str
    customer_id: str
    meter: str
    quantity: Decimal | None
    timestamp: datetime  # aware, UTC
    properties: dict[str, Any]
    properties_json: str  # canonical JSON text (sorted keys, compact)


class _NonFinite:
    """Stands in for the non-standard JSON literals NaN, Infinity and -Infinity."""

    __slots__ = ("literal",)

    def __init__(self, literal: str) -> None:
        self.literal = literal


def _float_to_decimal(text: str) -> Decimal:
    # JSON numbers with a fraction or exponent become exact Decimals, never floats.
    return Decimal(text)


# msgspec decodes several times faster than the standard library, and hands each number with a
# fraction or exponent over as its text, so quantities stay exact Decimals. On anything it
# refuses (invalid JSON, NaN/Infinity literals, lone surrogates, other encodings, nesting too
# deep) the standard library decides, so what is accepted and every error stay as they were.
_FAST_DECODER = msgspec.json.Decoder(float_hook=_float_to_decimal)


def decode_body(raw: bytes) -> Any:
    """Decode JSON exactly (Decimal for non-integers); BodyError when it is not JSON."""
    try:
        return _FAST_DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError, ArithmeticError, ValueError, TypeError):
        pass
    try:
        return json.loads(raw, parse_float=_float_to_decimal, parse_constant=_NonFinite)
    except RecursionError:
        raise BodyError("JSON is nested too deeply") from None
    except ArithmeticError:  # decimal.InvalidOperation: an exponent beyond Decimal's range
        raise BodyError("body holds a number out of range") from None
    except (ValueError, TypeError) as exc:  # includes JSONDecodeError and UnicodeDecodeError
        raise BodyError(f"body is not valid JSON: {exc}") from None


def split_events(body: Any) -> tuple[list[Any], bool, list[FieldError]]:
    """Return (raw events, is_batch, errors) for a decoded body; BodyError if not an object."""
    if not isinstance(body, dict):
        raise BodyError('body must be a JSON object: one event, or {"events": [...]}')
    if "events" not in body:
        return [body], False, []
    events = body["events"]
    extra = sorted(set(body) - {"events"})
    if extra:
        name = _field_name(extra[0])
        return [], True, [FieldError(None, name, 'unknown field next to "events"')]
    if not isinstance(events, list):
        return [], True, [FieldError(None, "events", "must be a list of event objects")]
    if not 1 <= len(events) <= MAX_BATCH:
        message = f"must hold 1 to {MAX_BATCH} events, got {len(events)}"
        return [], True, [FieldError(None, "events", message)]
    return events, True, []


def _field_name(name: str) -> str:
    """A client's key as it can be echoed in an error: lone surrogates become escapes."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def parse_event(
    raw: Any, *, index: int, now: datetime, max_age: timedelta, max_future: timedelta
) -> tuple[EventInput | None, list[FieldError]]:
    """Validate one raw event object; return the record or the field errors."""
    if not isinstance(raw, dict):
        return None, [FieldError(index, "event", "must be a JSON object")]
    errors: list[FieldError] = []
    if not raw.keys() <= EVENT_FIELDS:
        errors = [
            FieldError(index, _field_name(name), "unknown field")
            for name in sorted(set(raw) - EVENT_FIELDS)
        ]

    event_id = raw.get("event_id")
    if event_id is None:
        errors.append(FieldError(index, "event_id", "is required"))
    elif not isinstance(event_id, str):
        errors.append(FieldError(index, "event_id", "must be a string"))
    elif not _EVENT_ID_RE.fullmatch(event_id):
        errors.append(
            FieldError(
                index,
                "event_id",
                f"must be 1-{MAX_EVENT_ID_LENGTH} printable ASCII characters without spaces",
            )
        )

    customer_id = raw.get("customer_id")
    if customer_id is None:
        errors.append(FieldError(index, "customer_id", "is required"))
    elif (
        not isinstance(customer_id, str)
        or not 1 <= len(customer_id) <= 128
        or not customer_id.isprintable()
    ):
        message = "must be a string of 1-128 printable characters"
        errors.append(FieldError(index, "customer_id", message))

    meter = raw.get("meter")
    if meter is None:
        errors.append(FieldError(index, "meter", "is required"))
    elif not isinstance(meter, str) or not _METER_CODE_RE.fullmatch(meter):
        errors.append(FieldError(index, "meter", "must be a meter code (a string)"))

    quantity, quantity_error = _parse_quantity(raw.get("quantity"), present="quantity" in raw)
    if quantity_error:
        errors.append(FieldError(index, "quantity", quantity_error))

    timestamp, timestamp_error = _parse_timestamp(
        raw.get("timestamp"), now=now, max_age=max_age, max_future=max_future
    )
    if timestamp_error:
        errors.append(FieldError(index, "timestamp", timestamp_error))

    properties, properties_json, properties_error = _parse_properties(raw.get("properties"))
    if properties_error:
        errors.append(FieldError(index, "properties", properties_error))

    if errors:
        return None, errors
    # No error, so each field passed its check above.
    assert isinstance(event_id, str) and isinstance(customer_id, str) and isinstance(meter, str)
    assert timestamp is not None and properties is not None and properties_json is not None
    return (
        EventInput(
            index=index,
            event_id=event_id,
            customer_id=customer_id,
            meter=meter,
            quantity=quantity,
            timestamp=timestamp,
            properties=properties,
            properties_json=properties_json,
        ),
        [],
    )


def _parse_quantity(value: Any, *, present: bool) -> tuple[Decimal | None, str | None]:
    if not present or value is None:
        return None, None  # the service decides: count meters default to 1, others require it
    if isinstance(value, bool):
        return None, "must be a number, not a boolean"
    if isinstance(value, _NonFinite):
        return None, "must be a finite number"
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        if not _DECIMAL_STRING_RE.fullmatch(value):
            return None, "must be a JSON number or a decimal string"
        try:
            number = Decimal(value)
        except InvalidOperation:
            return None, "must be a JSON number or a decimal string"
    else:
        return None, "must be a JSON number or a decimal string"
    if not number.is_finite():
        return None, "must be a finite number"
    if number < 0:
        return None, "must not be negative"
    if number > MAX_QUANTITY:
        return None, "must not exceed 10^12"
    if number != number.quantize(QUANTUM, rounding="ROUND_DOWN"):
        return None, f"must have at most {QUANTITY_PLACES} decimal places"
    return number.quantize(QUANTUM) + 0, None


def _parse_timestamp(
    value: Any, *, now: datetime, max_age: timedelta, max_future: timedelta
) -> tuple[datetime | None, str | None]:
    if value is None:
        return None, "is required"
    if not isinstance(value, str):
        return None, "must be an RFC 3339 string with an offset, e.g. 2026-01-31T12:00:00Z"
    match = _RFC3339_RE.fullmatch(value)
    if not match:
        return None, "must be RFC 3339 with an explicit offset, e.g. 2026-01-31T12:00:00Z"
    fraction, zulu = match.group(7), match.group(8)
    try:
        if zulu == "Z" and value[10] == "T" and (fraction is None or len(fraction) <= 6):
            # The common form, already checked by the regex: parsed in C, to the same instant.
            instant = datetime.fromisoformat(value)
        else:
            instant = _instant(match)
    except (ValueError, OverflowError):
        return None, "is not a real date and time"
    if instant > now + max_future:
        return None, f"must not be more than {int(max_future.total_seconds())} s in the future"
    if instant < now - max_age:
        days = max_age.total_seconds() / 86400
        return None, f"is older than the accepted window ({days:g} days)"
    return instant, None


def _instant(match: re.Match[str]) -> datetime:
    """The aware UTC instant of an RFC 3339 match (any offset; fractions truncated to
    microseconds); ValueError when the date, time or offset does not exist."""
    fraction, zulu, sign = match[7], match[8], match[9]
    micro = int((fraction or "0").ljust(6, "0")[:6])
    offset = timedelta(0)
    if not zulu:  # then the regex matched the sign and both offset fields
        off_h, off_m = int(match[10]), int(match[11])
        if off_h > 23 or off_m > 59:
            raise ValueError("offset out of range")
        offset = timedelta(hours=off_h, minutes=off_m)
        if sign == "-":
            offset = -offset
    year, month, day, hour, minute, second = (int(match[group]) for group in range(1, 7))
    local = datetime(  # noqa: DTZ001 - the offset is applied on the next line
        year, month, day, hour, minute, second, micro
    )
    return (local - offset).replace(tzinfo=UTC)


def _jsonable(value: Any) -> Any:
    """Properties are dimensions, not amounts: exact Decimals become plain JSON numbers."""
    if isinstance(value, Decimal):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(str(value))
        return number
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, _NonFinite):
        raise ValueError(value.literal)
    return value


# The canonical text of properties (it is fingerprinted, so it never changes form): one encoder,
# built once, gives exactly json.dumps(..., sort_keys=True, separators=(",", ":"),
# ensure_ascii=False).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_LITERALS = {True: "true", False: "false", None: "null"}


def _canonical_flat(value: dict[str, Any]) -> str | None:
    """The canonical text of a flat object of strings, integers, booleans and nulls (the common
    {"agent_id": "..."} case), built as the encoder builds it -- same escaping function, same
    key order, int.__repr__ -- without its per-call set-up; None for anything else."""
    parts = []
    for key in sorted(value):
        item = value[key]
        kind = type(item)
        if kind is str:
            text = _json_string(item)
        elif kind is int:
            text = int.__repr__(item)
        elif kind is bool or item is None:
            text = _LITERALS[item]
        else:
            return None
        parts.append(f"{_json_string(key)}:{text}")
    return "{" + ",".join(parts) + "}"


def _parse_properties(value: Any) -> tuple[dict[str, Any] | None, str | None, str | None]:
    if value is None:
        return {}, "{}", None
    if not isinstance(value, dict):
        return None, None, "must be a JSON object"
    if len(value) > MAX_PROPERTIES_KEYS:
        return None, None, f"must have at most {MAX_PROPERTIES_KEYS} keys"
    try:
        text = _canonical_flat(value)
        clean = value
        if text is None:
            clean = _jsonable(value)
            text = _CANONICAL.encode(clean)
    except ValueError:
        return None, None, "must not contain NaN or Infinity"
    except RecursionError:
        return None, None, "is nested too deeply"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None, None, "must be valid Unicode (no lone surrogates)"
    if "\\u0000" in text and _JSON_NUL_RE.search(text):
        return None, None, "must not contain NUL characters"
    if size > MAX_PROPERTIES_BYTES:
        return None, None, f"must be at most {MAX_PROPERTIES_BYTES} bytes serialized"
    return clean, text, None


def fingerprint(*, customer_pk: int, meter_pk: int, quantity: Decimal, event: EventInput) -> str:
    """SHA-256 of the canonical payload: equal for a true duplicate, different for a conflict."""
    canonical = "\x1f".join(
        (
            str(customer_pk),
            str(meter_pk),
            f"{quantity.quantize(QUANTUM):f}",  # 1 and 1.000000 are the same quantity
            event.timestamp.isoformat(timespec="microseconds"),
            event.properties_json,
        )
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
