"""Client-side checks mirroring the service's ingestion rules, so mistakes fail at record().

The service (metering/event_parsing.py) is the authority; these checks only make the common
mistakes fail fast, in the caller's stack, instead of in the dead-letter table later.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from agent_billing.errors import InvalidEvent

MAX_EVENT_ID_LENGTH = 128
MAX_QUANTITY = Decimal(10) ** 12
QUANTUM = Decimal("0.000001")  # 6 decimal places
MAX_PROPERTIES_BYTES = 4096
MAX_PROPERTIES_KEYS = 50
MAX_FUTURE = timedelta(minutes=5)
MAX_AGE = timedelta(days=35)  # the service's default BILLING_MAX_EVENT_AGE

_EVENT_ID_RE = re.compile(r"[\x21-\x7e]{1,128}", re.ASCII)
_METER_RE = re.compile(r"[-a-zA-Z0-9_]{1,64}", re.ASCII)
_DECIMAL_STRING_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)
_JSON_NUL_RE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def event_id(value: Any, *, name: str = "event_id") -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not _EVENT_ID_RE.fullmatch(value):
        raise InvalidEvent(
            f"{name} must be 1-{MAX_EVENT_ID_LENGTH} printable ASCII characters without "
            f"spaces, got {value!r}"
        )
    return value


def customer_id(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"customer_id must be a str, not {type(value).__name__}")
    if not 1 <= len(value) <= 128 or not value.isprintable():
        raise InvalidEvent(f"customer_id must be 1-128 printable characters, got {value!r}")
    return value


def meter(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"meter must be a str, not {type(value).__name__}")
    if not _METER_RE.fullmatch(value):
        raise InvalidEvent(f"meter must be a meter code ([-a-zA-Z0-9_]{{1,64}}), got {value!r}")
    return value


def quantity(value: Any) -> Decimal:
    """An exact, valid quantity. Floats are refused: 0.1 is not exactly 0.1 in binary."""
    if isinstance(value, bool):
        raise TypeError("quantity must be a number, not a bool")
    if isinstance(value, float):
        raise TypeError(
            "quantity must not be a float (binary floats are inexact); pass an int, a "
            f"decimal.Decimal or a decimal string, e.g. Decimal({str(value)!r})"
        )
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        if not _DECIMAL_STRING_RE.fullmatch(value):
            raise InvalidEvent(f"quantity must be a decimal string, got {value!r}")
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise InvalidEvent(f"quantity must be a decimal string, got {value!r}") from None
    else:
        raise TypeError(
            f"quantity must be an int, a Decimal or a decimal string, not {type(value).__name__}"
        )
    if not number.is_finite():
        raise InvalidEvent(f"quantity must be finite, got {value!r}")
    if number < 0:
        raise InvalidEvent(f"quantity must not be negative, got {value!r}")
    if number > MAX_QUANTITY:
        raise InvalidEvent(f"quantity must not exceed 10^12, got {value!r}")
    if number != number.quantize(QUANTUM, rounding=ROUND_DOWN):
        raise InvalidEvent(f"quantity must have at most 6 decimal places, got {value!r}")
    return number


def quantity_text(number: Decimal) -> str:
    """The wire form: a plain decimal string without exponent, e.g. "1500" or "0.25"."""
    if number == 0:
        return "0"
    return format(number.quantize(QUANTUM).normalize(), "f")


def minutes_between(start_ns: int, end_ns: int) -> Decimal:
    """Elapsed monotonic nanoseconds as minutes, rounded half-up to 6 decimal places."""
    elapsed = max(end_ns - start_ns, 0)
    return (Decimal(elapsed) / Decimal(60_000_000_000)).quantize(QUANTUM, rounding=ROUND_HALF_UP)


def format_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def timestamp(value: Any, *, now: datetime) -> str:
    """RFC 3339 text with an offset, inside the service's accepted window."""
    if value is None:
        return format_timestamp(now)
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidEvent(
                "timestamp must be an aware datetime (e.g. datetime.now(UTC)), not a naive one"
            )
        instant = value.astimezone(UTC)
        text = format_timestamp(instant)
    elif isinstance(value, str):
        instant = _parse_rfc3339(value)
        text = value
    else:
        raise TypeError(f"timestamp must be a datetime or a str, not {type(value).__name__}")
    if instant > now + MAX_FUTURE:
        raise InvalidEvent(f"timestamp {text} is more than 5 minutes in the future")
    if instant < now - MAX_AGE:
        raise InvalidEvent(f"timestamp {text} is older than the accepted window (35 days)")
    return text


def _parse_rfc3339(value: str) -> datetime:
    match = _RFC3339_RE.fullmatch(value)
    if not match:
        raise InvalidEvent(
            f"timestamp must be RFC 3339 with an explicit offset, e.g. 2026-01-31T12:00:00Z, "
            f"got {value!r}"
        )
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    try:
        offset = timedelta(0)
        if not zulu:
            if int(off_h) > 23 or int(off_m) > 59:
                raise ValueError("offset out of range")
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            if sign == "-":
                offset = -offset
        micro = int((fraction or "0").ljust(6, "0")[:6])
        local = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=UTC
        )
        return local - offset
    except (ValueError, OverflowError):
        raise InvalidEvent(f"timestamp {value!r} is not a real date and time") from None


def properties(value: Any) -> dict[str, Any] | None:
    """A JSON object of at most 50 keys and 4 KiB serialized, without NaN, NUL or surrogates."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"properties must be a dict, not {type(value).__name__}")
    if len(value) > MAX_PROPERTIES_KEYS:
        raise InvalidEvent(f"properties must have at most {MAX_PROPERTIES_KEYS} keys")
    if any(not isinstance(key, str) for key in value):
        raise TypeError("properties keys must be strings")
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except ValueError:
        raise InvalidEvent("properties must not contain NaN or Infinity") from None
    except RecursionError:
        raise InvalidEvent("properties are nested too deeply") from None
    except TypeError as exc:
        raise TypeError(f"properties must hold JSON values only: {exc}") from None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidEvent("properties must be valid Unicode (no lone surrogates)") from None
    if _JSON_NUL_RE.search(text):
        raise InvalidEvent("properties must not contain NUL characters")
    if size > MAX_PROPERTIES_BYTES:
        raise InvalidEvent(
            f"properties must be at most {MAX_PROPERTIES_BYTES} bytes serialized, got {size}"
        )
    return json.loads(text)  # a private copy: later changes by the caller cannot leak in
