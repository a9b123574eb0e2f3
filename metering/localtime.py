"""A customer's time, as people read it: the one home for showing an instant in the customer's
IANA zone with the zone named.

Instants are stored in UTC; the portal (through Django's `{% timezone %}` tag and
`customer_zone`), the invoice document, the e-mails and the admin all word a customer's times
with these functions, so a period that starts at midnight in Berlin reads
"2026-12-01 00:00 Europe/Berlin" everywhere and never "Nov. 30, 11 p.m.".
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from metering.models import Customer

UTC_NAME = "UTC"
FORMAT = "%Y-%m-%d %H:%M"


def zone_named(name: str) -> ZoneInfo:
    """The zone of that IANA name, UTC for a name that is none (the model validates names, so
    only rows written around the validation fall back)."""
    try:
        return ZoneInfo(name or UTC_NAME)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(UTC_NAME)


def customer_zone(customer: Customer) -> ZoneInfo:
    return zone_named(customer.timezone)


def zone_label(zone: ZoneInfo) -> str:
    return zone.key


def local_time(instant: datetime, zone: ZoneInfo, *, named: bool = True) -> str:
    """`2026-12-01 00:00 Europe/Berlin` (without the name with named=False)."""
    text = instant.astimezone(zone).strftime(FORMAT)
    return f"{text} {zone_label(zone)}" if named else text


def local_span(start: datetime, end: datetime, zone: ZoneInfo) -> str:
    """A half-open period: `2026-12-01 00:00 to 2027-01-01 00:00 (Europe/Berlin)`."""
    return (
        f"{local_time(start, zone, named=False)} to {local_time(end, zone, named=False)} "
        f"({zone_label(zone)})"
    )


def customer_time(instant: datetime | None, customer: Customer) -> str:
    """An instant in the customer's zone, named; "" for none."""
    return "" if instant is None else local_time(instant, customer_zone(customer))


def customer_span(start: datetime, end: datetime, customer: Customer) -> str:
    return local_span(start, end, customer_zone(customer))
