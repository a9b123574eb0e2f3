"""Billing-period arithmetic: which half-open period ``[start, end)`` contains an instant.

DESIGN section 5 is the contract: a subscription has a billing anchor (an aware datetime), and
its periods are calendar-aligned in the customer's IANA time zone. This module is pure (stdlib
only), so services, selectors, tasks and tests all compute the same boundaries.

Boundaries, for an anchor whose local wall time in the customer's zone is ``D hh:mm:ss.ffffff``:

- ``month``: every month on day ``D`` at ``hh:mm:ss.ffffff`` local time, clamped to the last day
  of a shorter month. Each month is clamped from the original anchor day, so an anchor on the
  31st gives Feb 28 (or 29), then Mar 31 again: the day never drifts.
- ``day``: every local day at ``hh:mm:ss.ffffff``, so a period lasts 23 or 25 hours across a
  daylight-saving change.
- ``hour``: every 3600 seconds of absolute time from the anchor instant; the zone plays no part,
  so repeated or skipped local hours cannot make a period ambiguous.

Periods extend backwards as well as forwards: an instant before the anchor falls in a period
computed by the same rule, with no special case.

Local wall time to instant (the DST rule): a boundary's wall time is read with ``fold=0``, exactly
as ``zoneinfo`` does (and as RFC 5545 and ``java.time`` do):

- a wall time that happens twice (clocks go back) means its first occurrence;
- a wall time that never happens (clocks go forward) is read with the UTC offset in force before
  the gap, which moves it forward by the gap's length (02:30 on New York's spring-forward day is
  03:30 EDT).

The one exception is the anchor itself, which is always a boundary at its own instant, even when
its wall time is the second occurrence of a repeated time.

Why the boundaries never go backwards: consecutive boundaries are at least one local day apart in
wall time, and reading a wall time with ``fold=0`` moves it by at most the length of the gap it
falls in, which in the tz database is at most 24 hours (Samoa and Kwajalein each skipped a whole
day). So the sequence of boundary instants is non-decreasing; where a whole local day is skipped,
two boundaries coincide and the empty period between them is dropped. Every instant therefore
falls in exactly one non-empty period, and consecutive periods share their boundary, so periods
tile time with no gaps or overlaps. The tests check this across many zones and transitions.

Finding the period of an instant far from the anchor costs a constant number of boundary
computations: arithmetic estimates the period index, then at most a few steps correct it.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MONTH = "month"
DAY = "day"
HOUR = "hour"
INTERVALS: tuple[str, ...] = (MONTH, DAY, HOUR)

_HOUR = timedelta(hours=1)


class Period(NamedTuple):
    """A billing period: the half-open interval ``[start, end)``, both aware UTC datetimes."""

    start: datetime  # inclusive, aware, in UTC
    end: datetime  # exclusive, aware, in UTC

    def contains(self, instant: datetime) -> bool:
        """Whether the aware ``instant`` falls in ``[start, end)``."""
        return self.start <= instant < self.end


@dataclass(frozen=True)
class _Schedule:
    """The boundary rule of one subscription: anchor, zone and interval, validated."""

    anchor_utc: datetime  # the anchor instant, aware, in UTC
    anchor_wall: datetime  # the anchor's naive local wall time in ``zone``
    zone: ZoneInfo
    interval: str


def period_containing(instant: datetime, *, anchor: datetime, interval: str, tz: str) -> Period:
    """Return the period ``[start, end)`` that contains the aware ``instant``.

    ``anchor`` is the subscription's aware billing anchor, ``interval`` one of ``INTERVALS``
    and ``tz`` the customer's IANA zone name. Raises ``ValueError`` for a naive datetime, an
    unknown interval or an unknown zone.
    """
    schedule = _schedule(anchor=anchor, interval=interval, tz=tz)
    return _period_containing(schedule, _aware("instant", instant))


def next_period(instant: datetime, *, anchor: datetime, interval: str, tz: str) -> Period:
    """Return the period right after the one containing ``instant``; it starts at that end."""
    schedule = _schedule(anchor=anchor, interval=interval, tz=tz)
    current = _period_containing(schedule, _aware("instant", instant))
    return _period_containing(schedule, current.end)


def previous_period(instant: datetime, *, anchor: datetime, interval: str, tz: str) -> Period:
    """Return the period right before the one containing ``instant``; it ends at that start."""
    schedule = _schedule(anchor=anchor, interval=interval, tz=tz)
    current = _period_containing(schedule, _aware("instant", instant))
    return _period_containing(schedule, current.start - timedelta(microseconds=1))


def periods_between(
    start: datetime, end: datetime, *, anchor: datetime, interval: str, tz: str
) -> Iterator[Period]:
    """Yield, in order, every period that overlaps the half-open range ``[start, end)``.

    Nothing is yielded when ``end <= start``. The first period may begin before ``start`` and
    the last may end after ``end``. The range is validated before the first period is yielded.
    """
    schedule = _schedule(anchor=anchor, interval=interval, tz=tz)
    start = _aware("start", start)
    end = _aware("end", end)
    return _periods_between(schedule, start, end)


def _periods_between(schedule: _Schedule, start: datetime, end: datetime) -> Iterator[Period]:
    """Walk the periods from the one containing ``start`` until one reaches ``end``."""
    if end <= start:
        return
    period = _period_containing(schedule, start)
    while True:
        yield period
        if period.end >= end:
            return
        period = _period_containing(schedule, period.end)


def _period_containing(schedule: _Schedule, instant: datetime) -> Period:
    """Find ``n`` with ``boundary(n) <= instant < boundary(n + 1)``, starting from an estimate.

    Boundaries are non-decreasing in ``n``, so both correction loops terminate, and since the
    instant lies between them the resulting period is never empty.
    """
    n = _estimate_index(schedule, instant)
    while _boundary(schedule, n) > instant:
        n -= 1
    while _boundary(schedule, n + 1) <= instant:
        n += 1
    return Period(_boundary(schedule, n), _boundary(schedule, n + 1))


def _estimate_index(schedule: _Schedule, instant: datetime) -> int:
    """Estimate the index of the period containing ``instant``, off by at most a step or two."""
    if schedule.interval == HOUR:
        return (instant - schedule.anchor_utc) // _HOUR  # exact floor division
    local = instant.astimezone(schedule.zone)
    anchor = schedule.anchor_wall
    if schedule.interval == DAY:
        return (local.date() - anchor.date()).days
    return (local.year - anchor.year) * 12 + (local.month - anchor.month)


def _boundary(schedule: _Schedule, n: int) -> datetime:
    """Return the start of period ``n`` (period 0 starts at the anchor), aware, in UTC."""
    if n == 0:
        return schedule.anchor_utc
    if schedule.interval == HOUR:
        return schedule.anchor_utc + n * _HOUR
    anchor = schedule.anchor_wall
    if schedule.interval == DAY:
        wall = anchor + timedelta(days=n)  # naive arithmetic: same wall time, n days later
    else:
        year, month0 = divmod(anchor.year * 12 + (anchor.month - 1) + n, 12)
        month = month0 + 1
        day = min(anchor.day, calendar.monthrange(year, month)[1])  # clamp from the anchor day
        wall = anchor.replace(year=year, month=month, day=day)
    return _wall_to_utc(wall, schedule.zone)


def _wall_to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """Resolve a naive local wall time in ``zone`` to an aware UTC instant with ``fold=0``.

    A repeated wall time gives its first occurrence; a skipped one is read with the offset in
    force before the gap (so it lands after the gap by the same distance).
    """
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def _schedule(*, anchor: datetime, interval: str, tz: str) -> _Schedule:
    """Validate the subscription's parameters and precompute the anchor's local wall time."""
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {', '.join(INTERVALS)}; got {interval!r}")
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValueError(f"unknown time zone: {tz!r}") from exc
    anchor = _aware("anchor", anchor)
    wall = anchor.astimezone(zone).replace(tzinfo=None, fold=0)
    return _Schedule(
        anchor_utc=anchor.astimezone(UTC), anchor_wall=wall, zone=zone, interval=interval
    )


def _aware(name: str, value: datetime) -> datetime:
    """Return ``value`` unchanged if it is an aware datetime; raise ``ValueError`` otherwise."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime; got naive {value.isoformat()}")
    return value
