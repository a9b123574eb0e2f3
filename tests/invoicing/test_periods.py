"""Tests of billing-period arithmetic: hand-computed boundaries, DST edges and tiling properties.

Expected boundaries are written as UTC instants computed by hand from the zones' rules:
New York is UTC-5 (EST) / UTC-4 (EDT, 2026-03-08 to 2026-11-01); London is UTC+0 / UTC+1
(BST, 2026-03-29 to 2026-10-25); Kolkata is UTC+5:30 all year; Chatham is UTC+12:45 /
UTC+13:45 (until 2026-04-05 and from 2026-09-27, switching at 03:45 daylight / 02:45 standard).
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invoicing import periods
from invoicing.periods import (
    Period,
    next_period,
    period_containing,
    periods_between,
    previous_period,
)

NEW_YORK = "America/New_York"
LONDON = "Europe/London"
KOLKATA = "Asia/Kolkata"
CHATHAM = "Pacific/Chatham"
ONE_MICROSECOND = timedelta(microseconds=1)


def utc(*fields: int) -> datetime:
    """An aware UTC datetime from (year, month, day[, hour[, minute]])."""
    return datetime(*fields, tzinfo=UTC)


def local(tz: str, *fields: int, fold: int = 0) -> datetime:
    """An aware datetime with a wall time in the zone ``tz``."""
    return datetime(*fields, tzinfo=ZoneInfo(tz), fold=fold)


def span(start: datetime, end: datetime) -> Period:
    return Period(start, end)


# --- monthly ------------------------------------------------------------------------------


def test_new_york_monthly_anchored_on_the_31st_clamps_february() -> None:
    anchor = local(NEW_YORK, 2026, 1, 31)  # 05:00Z

    february = period_containing(utc(2026, 3, 1), anchor=anchor, interval="month", tz=NEW_YORK)

    # Feb 28 00:00 EST = 05:00Z; Mar 31 00:00 EDT = 04:00Z (DST began Mar 8).
    assert february == span(utc(2026, 2, 28, 5), utc(2026, 3, 31, 4))
    assert february.end - february.start == timedelta(days=31, hours=-1)


def test_new_york_monthly_boundaries_for_a_year_never_drift() -> None:
    anchor = local(NEW_YORK, 2026, 1, 31)

    starts = [
        p.start
        for p in periods_between(
            utc(2026, 2, 1), utc(2027, 1, 31, 5), anchor=anchor, interval="month", tz=NEW_YORK
        )
    ]

    assert starts == [
        utc(2026, 1, 31, 5),
        utc(2026, 2, 28, 5),
        utc(2026, 3, 31, 4),
        utc(2026, 4, 30, 4),
        utc(2026, 5, 31, 4),
        utc(2026, 6, 30, 4),
        utc(2026, 7, 31, 4),
        utc(2026, 8, 31, 4),
        utc(2026, 9, 30, 4),
        utc(2026, 10, 31, 4),
        utc(2026, 11, 30, 5),
        utc(2026, 12, 31, 5),
    ]


def test_new_york_monthly_period_spanning_the_fall_transition() -> None:
    anchor = local(NEW_YORK, 2026, 1, 31)

    november = period_containing(utc(2026, 11, 15), anchor=anchor, interval="month", tz=NEW_YORK)

    assert november == span(utc(2026, 10, 31, 4), utc(2026, 11, 30, 5))
    assert november.end - november.start == timedelta(days=30, hours=1)


@pytest.mark.parametrize(
    ("anchor_day", "expected_local_starts"),
    [
        (
            29,
            [(2026, 1, 29), (2026, 2, 28), (2026, 3, 29), (2026, 4, 29), (2026, 5, 29)],
        ),
        (
            30,
            [(2026, 1, 30), (2026, 2, 28), (2026, 3, 30), (2026, 4, 30), (2026, 5, 30)],
        ),
        (
            31,
            [(2026, 1, 31), (2026, 2, 28), (2026, 3, 31), (2026, 4, 30), (2026, 5, 31)],
        ),
    ],
)
def test_kolkata_monthly_anchors_late_in_the_month(
    anchor_day: int, expected_local_starts: list[tuple[int, int, int]]
) -> None:
    anchor = local(KOLKATA, 2026, 1, anchor_day, 9)  # 09:00 IST = 03:30Z

    starts = [
        p.start
        for p in periods_between(
            anchor, utc(2026, 6, 1), anchor=anchor, interval="month", tz=KOLKATA
        )
    ]

    assert starts == [datetime(y, m, d, 3, 30, tzinfo=UTC) for (y, m, d) in expected_local_starts]


@pytest.mark.parametrize(
    ("anchor_day", "february_start", "march_start"),
    [
        (29, utc(2028, 2, 29, 3, 30), utc(2028, 3, 29, 3, 30)),
        (30, utc(2028, 2, 29, 3, 30), utc(2028, 3, 30, 3, 30)),
        (31, utc(2028, 2, 29, 3, 30), utc(2028, 3, 31, 3, 30)),
    ],
)
def test_kolkata_monthly_late_anchors_in_a_leap_year(
    anchor_day: int, february_start: datetime, march_start: datetime
) -> None:
    anchor = local(KOLKATA, 2026, 1, anchor_day, 9)

    february = period_containing(utc(2028, 3, 1), anchor=anchor, interval="month", tz=KOLKATA)

    assert february == span(february_start, march_start)


def test_london_monthly_anchored_on_february_29() -> None:
    anchor = local(LONDON, 2024, 2, 29, 12)  # 12:00Z

    starts = [
        p.start
        for p in periods_between(
            anchor, utc(2025, 4, 1), anchor=anchor, interval="month", tz=LONDON
        )
    ]

    # BST ran 2024-03-31 to 2024-10-27 and from 2025-03-30: noon BST is 11:00Z.
    assert starts == [
        utc(2024, 2, 29, 12),
        utc(2024, 3, 29, 12),
        utc(2024, 4, 29, 11),
        utc(2024, 5, 29, 11),
        utc(2024, 6, 29, 11),
        utc(2024, 7, 29, 11),
        utc(2024, 8, 29, 11),
        utc(2024, 9, 29, 11),
        utc(2024, 10, 29, 12),
        utc(2024, 11, 29, 12),
        utc(2024, 12, 29, 12),
        utc(2025, 1, 29, 12),
        utc(2025, 2, 28, 12),  # no Feb 29 in 2025: clamped
        utc(2025, 3, 29, 12),  # back on the 29th
    ]
    leap_february = period_containing(utc(2028, 3, 1), anchor=anchor, interval="month", tz=LONDON)
    assert leap_february == span(utc(2028, 2, 29, 12), utc(2028, 3, 29, 11))


def test_london_monthly_across_both_transitions() -> None:
    anchor = local(LONDON, 2026, 1, 31)

    march = period_containing(utc(2026, 3, 15), anchor=anchor, interval="month", tz=LONDON)
    october = period_containing(utc(2026, 10, 15), anchor=anchor, interval="month", tz=LONDON)

    assert march == span(utc(2026, 2, 28), utc(2026, 3, 30, 23))
    assert october == span(utc(2026, 9, 29, 23), utc(2026, 10, 31))


def test_chatham_monthly_across_both_transitions() -> None:
    anchor = local(CHATHAM, 2026, 1, 31)  # 00:00 +13:45 = 2026-01-30 10:15Z

    starts = [
        p.start
        for p in periods_between(
            anchor, utc(2026, 10, 1), anchor=anchor, interval="month", tz=CHATHAM
        )
    ]

    assert starts == [
        utc(2026, 1, 30, 10, 15),
        utc(2026, 2, 27, 10, 15),
        utc(2026, 3, 30, 10, 15),
        utc(2026, 4, 29, 11, 15),  # standard time (+12:45) from 2026-04-05
        utc(2026, 5, 30, 11, 15),
        utc(2026, 6, 29, 11, 15),
        utc(2026, 7, 30, 11, 15),
        utc(2026, 8, 30, 11, 15),
        utc(2026, 9, 29, 10, 15),  # daylight time (+13:45) from 2026-09-27
    ]


def test_monthly_periods_extend_before_the_anchor() -> None:
    anchor = local(NEW_YORK, 2026, 1, 31)

    december = period_containing(utc(2025, 12, 15), anchor=anchor, interval="month", tz=NEW_YORK)
    leap_february = period_containing(utc(2024, 3, 1), anchor=anchor, interval="month", tz=NEW_YORK)

    assert december == span(utc(2025, 11, 30, 5), utc(2025, 12, 31, 5))
    assert leap_february == span(utc(2024, 2, 29, 5), utc(2024, 3, 31, 4))


# --- daily --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "instant", "expected"),
    [
        # New York midnight: 23 hours in spring, 25 in fall.
        (NEW_YORK, utc(2026, 3, 8, 12), span(utc(2026, 3, 8, 5), utc(2026, 3, 9, 4))),
        (NEW_YORK, utc(2026, 11, 1, 12), span(utc(2026, 11, 1, 4), utc(2026, 11, 2, 5))),
        (NEW_YORK, utc(2026, 3, 7, 12), span(utc(2026, 3, 7, 5), utc(2026, 3, 8, 5))),
        # London midnight.
        (LONDON, utc(2026, 3, 29, 12), span(utc(2026, 3, 29), utc(2026, 3, 29, 23))),
        (LONDON, utc(2026, 10, 25, 12), span(utc(2026, 10, 24, 23), utc(2026, 10, 26))),
        # Kolkata has no DST: always 24 hours, on the half hour in UTC.
        (KOLKATA, utc(2026, 3, 8, 12), span(utc(2026, 3, 7, 18, 30), utc(2026, 3, 8, 18, 30))),
        # Chatham midnight: 25 hours in April, 23 in September.
        (
            CHATHAM,
            utc(2026, 4, 5),
            span(utc(2026, 4, 4, 10, 15), utc(2026, 4, 5, 11, 15)),
        ),
        (
            CHATHAM,
            utc(2026, 9, 27),
            span(utc(2026, 9, 26, 11, 15), utc(2026, 9, 27, 10, 15)),
        ),
    ],
)
def test_daily_midnight_periods_across_dst(tz: str, instant: datetime, expected: Period) -> None:
    anchor = local(tz, 2026, 1, 1)

    assert period_containing(instant, anchor=anchor, interval="day", tz=tz) == expected


@pytest.mark.parametrize(
    ("tz", "anchor_time", "day", "expected"),
    [
        # 02:30 does not exist on 2026-03-08 in New York: read as EST, i.e. 03:30 EDT.
        (NEW_YORK, (2, 30), (2026, 3, 7), span(utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 30))),
        (NEW_YORK, (2, 30), (2026, 3, 8), span(utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30))),
        # 01:30 happens twice on 2026-11-01 in New York: the first (EDT) counts.
        (
            NEW_YORK,
            (1, 30),
            (2026, 10, 31),
            span(utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30)),
        ),
        (NEW_YORK, (1, 30), (2026, 11, 1), span(utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30))),
        # London: 01:30 skipped on 2026-03-29 (read as GMT), repeated on 2026-10-25 (BST counts).
        (LONDON, (1, 30), (2026, 3, 28), span(utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30))),
        (LONDON, (1, 30), (2026, 3, 29), span(utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30))),
        (LONDON, (1, 30), (2026, 10, 25), span(utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30))),
        # Chatham: 03:00 repeated on 2026-04-05 (+13:45 counts), skipped on 2026-09-27.
        (CHATHAM, (3, 0), (2026, 4, 5), span(utc(2026, 4, 4, 13, 15), utc(2026, 4, 5, 14, 15))),
        (CHATHAM, (3, 0), (2026, 9, 27), span(utc(2026, 9, 26, 14, 15), utc(2026, 9, 27, 13, 15))),
    ],
)
def test_daily_boundaries_on_skipped_and_repeated_wall_times(
    tz: str, anchor_time: tuple[int, int], day: tuple[int, int, int], expected: Period
) -> None:
    anchor = local(tz, 2026, 1, 1, *anchor_time)

    # The middle of the expected period, and both of its ends.
    middle = expected.start + (expected.end - expected.start) / 2
    for instant in (expected.start, middle, expected.end - ONE_MICROSECOND):
        assert period_containing(instant, anchor=anchor, interval="day", tz=tz) == expected
    assert local(tz, *day, *anchor_time).astimezone(UTC) == expected.start


def test_second_occurrence_of_a_repeated_hour_stays_in_the_same_day() -> None:
    anchor = local(NEW_YORK, 2026, 1, 1, 1, 30)
    first_0110 = local(NEW_YORK, 2026, 11, 1, 1, 10, fold=0)  # 05:10Z, EDT
    second_0110 = local(NEW_YORK, 2026, 11, 1, 1, 10, fold=1)  # 06:10Z, EST

    first = period_containing(first_0110, anchor=anchor, interval="day", tz=NEW_YORK)
    second = period_containing(second_0110, anchor=anchor, interval="day", tz=NEW_YORK)

    assert first == span(utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30))
    assert second == span(utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30))


def test_an_anchor_on_the_second_occurrence_is_itself_a_boundary() -> None:
    anchor = local(NEW_YORK, 2026, 11, 1, 1, 30, fold=1)  # 01:30 EST = 06:30Z

    current = period_containing(anchor, anchor=anchor, interval="day", tz=NEW_YORK)
    before = previous_period(anchor, anchor=anchor, interval="day", tz=NEW_YORK)

    assert current == span(utc(2026, 11, 1, 6, 30), utc(2026, 11, 2, 6, 30))
    # The day before starts at 01:30 EDT on Oct 31 and runs to the anchor: 25 hours.
    assert before == span(utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 6, 30))


def test_a_skipped_local_day_yields_no_empty_period() -> None:
    # Samoa skipped 2011-12-30: 2011-12-29 23:59:59 -10:00 was followed by 2011-12-31 00:00 +14:00.
    tz = "Pacific/Apia"
    anchor = local(tz, 2011, 12, 1)

    found = list(
        periods_between(
            utc(2011, 12, 28, 10), utc(2012, 1, 1, 10), anchor=anchor, interval="day", tz=tz
        )
    )

    assert found == [
        span(utc(2011, 12, 28, 10), utc(2011, 12, 29, 10)),  # Dec 28 local
        span(utc(2011, 12, 29, 10), utc(2011, 12, 30, 10)),  # Dec 29 local
        span(utc(2011, 12, 30, 10), utc(2011, 12, 31, 10)),  # Dec 31 local
        span(utc(2011, 12, 31, 10), utc(2012, 1, 1, 10)),  # Jan 1 local
    ]


def test_a_month_of_new_york_days_tiles_with_one_short_day() -> None:
    anchor = local(NEW_YORK, 2026, 1, 1)

    days = list(
        periods_between(
            utc(2026, 3, 1, 5), utc(2026, 4, 1, 4), anchor=anchor, interval="day", tz=NEW_YORK
        )
    )

    assert len(days) == 31
    assert days[0].start == utc(2026, 3, 1, 5)
    assert days[-1].end == utc(2026, 4, 1, 4)
    assert all(a.end == b.start for a, b in pairwise(days))
    lengths = [d.end - d.start for d in days]
    assert lengths == [timedelta(hours=24)] * 7 + [timedelta(hours=23)] + [timedelta(hours=24)] * 23


# --- hourly -------------------------------------------------------------------------------


def test_hourly_periods_across_the_fall_transition_are_distinct_hours() -> None:
    anchor = local(NEW_YORK, 2026, 1, 1)  # 05:00Z

    hours = list(
        periods_between(
            utc(2026, 11, 1, 4), utc(2026, 11, 1, 8), anchor=anchor, interval="hour", tz=NEW_YORK
        )
    )

    # Local 01:00-02:00 happens twice (05:00Z EDT and 06:00Z EST): two different periods.
    assert hours == [
        span(utc(2026, 11, 1, 4), utc(2026, 11, 1, 5)),
        span(utc(2026, 11, 1, 5), utc(2026, 11, 1, 6)),
        span(utc(2026, 11, 1, 6), utc(2026, 11, 1, 7)),
        span(utc(2026, 11, 1, 7), utc(2026, 11, 1, 8)),
    ]


def test_hourly_periods_across_the_spring_transition() -> None:
    anchor = local(NEW_YORK, 2026, 3, 8, 1, 15)  # 01:15 EST = 06:15Z

    after_gap = period_containing(
        local(NEW_YORK, 2026, 3, 8, 3, 20), anchor=anchor, interval="hour", tz=NEW_YORK
    )
    before_anchor = period_containing(
        utc(2026, 3, 8, 5), anchor=anchor, interval="hour", tz=NEW_YORK
    )

    assert after_gap == span(utc(2026, 3, 8, 7, 15), utc(2026, 3, 8, 8, 15))
    assert before_anchor == span(utc(2026, 3, 8, 4, 15), utc(2026, 3, 8, 5, 15))


@pytest.mark.parametrize(
    ("tz", "anchor", "instant", "expected"),
    [
        (
            CHATHAM,
            local(CHATHAM, 2026, 1, 1),  # 2025-12-31 10:15Z
            utc(2026, 4, 5, 14),
            span(utc(2026, 4, 5, 13, 15), utc(2026, 4, 5, 14, 15)),
        ),
        (
            KOLKATA,
            local(KOLKATA, 2026, 1, 1),  # 2025-12-31 18:30Z
            utc(2026, 6, 1, 0, 10),
            span(utc(2026, 5, 31, 23, 30), utc(2026, 6, 1, 0, 30)),
        ),
        (
            LONDON,
            local(LONDON, 2026, 1, 1),
            local(LONDON, 2026, 10, 25, 1, 30, fold=1),  # 01:30Z
            span(utc(2026, 10, 25, 1), utc(2026, 10, 25, 2)),
        ),
    ],
)
def test_hourly_periods_align_on_the_anchor_instant(
    tz: str, anchor: datetime, instant: datetime, expected: Period
) -> None:
    assert period_containing(instant, anchor=anchor, interval="hour", tz=tz) == expected


# --- far from the anchor ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "anchor", "instant", "expected"),
    [
        (
            "hour",
            utc(2026, 1, 1),
            utc(2126, 6, 15, 12, 34),
            span(utc(2126, 6, 15, 12), utc(2126, 6, 15, 13)),
        ),
        (
            "day",
            local(NEW_YORK, 2026, 1, 1),
            utc(1926, 7, 4, 12),  # New York kept DST in 1926: 08:00 EDT
            span(utc(1926, 7, 4, 4), utc(1926, 7, 5, 4)),
        ),
        (
            "month",
            local(NEW_YORK, 2026, 1, 31),
            utc(2126, 2, 20),
            span(utc(2126, 1, 31, 5), utc(2126, 2, 28, 5)),
        ),
    ],
)
def test_far_instants_cost_a_few_boundary_computations(
    monkeypatch: pytest.MonkeyPatch,
    interval: str,
    anchor: datetime,
    instant: datetime,
    expected: Period,
) -> None:
    calls: list[int] = []
    original = periods._boundary

    def counting_boundary(schedule: periods._Schedule, n: int) -> datetime:
        calls.append(n)
        return original(schedule, n)

    monkeypatch.setattr(periods, "_boundary", counting_boundary)

    result = period_containing(instant, anchor=anchor, interval=interval, tz=NEW_YORK)

    assert result == expected
    assert len(calls) <= 6


# --- input validation ---------------------------------------------------------------------


def test_rejects_naive_datetimes_unknown_intervals_and_zones() -> None:
    anchor = utc(2026, 1, 1)
    naive = datetime(2026, 1, 1)  # deliberately without a time zone

    with pytest.raises(ValueError, match="instant must be an aware datetime"):
        period_containing(naive, anchor=anchor, interval="day", tz=LONDON)
    with pytest.raises(ValueError, match="anchor must be an aware datetime"):
        period_containing(anchor, anchor=naive, interval="day", tz=LONDON)
    with pytest.raises(ValueError, match="interval must be one of month, day, hour; got 'week'"):
        period_containing(anchor, anchor=anchor, interval="week", tz=LONDON)
    with pytest.raises(ValueError, match="unknown time zone: 'Mars/Olympus_Mons'"):
        period_containing(anchor, anchor=anchor, interval="day", tz="Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="end must be an aware datetime"):
        periods_between(anchor, naive, anchor=anchor, interval="day", tz=LONDON)


def test_periods_between_an_empty_range_is_empty() -> None:
    anchor = utc(2026, 1, 1)

    assert list(periods_between(anchor, anchor, anchor=anchor, interval="day", tz=LONDON)) == []
    assert (
        list(periods_between(utc(2026, 2, 1), anchor, anchor=anchor, interval="day", tz=LONDON))
        == []
    )


# --- monotonic, gap-free boundaries across many transitions ---------------------------------

# Zones with unusual transitions: a skipped day, midnight DST, 30-minute and 2-hour shifts.
TRANSITION_YEARS = [
    (NEW_YORK, 2026),
    (LONDON, 2026),
    (KOLKATA, 2026),
    (CHATHAM, 2026),
    ("Pacific/Apia", 2011),
    ("Pacific/Kwajalein", 1993),
    ("America/Sao_Paulo", 2018),
    ("Australia/Lord_Howe", 2026),
    ("Antarctica/Troll", 2026),
]
WALL_TIMES = [(0, 0), (0, 30), (1, 30), (2, 0), (2, 30), (2, 45), (3, 0), (23, 30)]


def resolve(wall: datetime, tz: str) -> datetime:
    """The documented rule: a local wall time read with fold=0, as an aware UTC instant."""
    return wall.replace(tzinfo=ZoneInfo(tz), fold=0).astimezone(UTC)


@pytest.mark.parametrize(("tz", "year"), TRANSITION_YEARS)
def test_daily_boundaries_tile_a_year_with_transitions(tz: str, year: int) -> None:
    for hour, minute in WALL_TIMES:
        anchor = local(tz, year, 1, 1, hour, minute)
        days = list(
            periods_between(
                utc(year, 1, 1), utc(year + 1, 1, 1), anchor=anchor, interval="day", tz=tz
            )
        )

        assert days[0].start <= utc(year, 1, 1) < days[0].end
        assert days[-1].start < utc(year + 1, 1, 1) <= days[-1].end
        for a, b in pairwise(days):
            assert a.start < a.end == b.start < b.end
        for day in days:
            # Each start is the anchor's wall time, on its local day or (pushed across
            # midnight by a gap) the day before, read with fold=0.
            start_date = day.start.astimezone(ZoneInfo(tz)).date()
            candidates = {
                resolve(datetime.combine(d, anchor.time()), tz)
                for d in (start_date, start_date - timedelta(days=1))
            }
            assert day.start in candidates


# --- properties ---------------------------------------------------------------------------

INTERESTING_ZONES = [NEW_YORK, LONDON, KOLKATA, CHATHAM, *(tz for tz, _ in TRANSITION_YEARS[4:])]
ALL_ZONES = sorted(available_timezones())
zones = st.one_of(st.sampled_from(INTERESTING_ZONES), st.sampled_from(ALL_ZONES))
intervals = st.sampled_from(["month", "day", "hour"])
instants = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.just(UTC),
)


def anchors_in(tz: str) -> st.SearchStrategy[datetime]:
    """Anchors given in the customer's zone, including skipped and repeated wall times."""
    return st.datetimes(
        min_value=datetime(1980, 1, 1),
        max_value=datetime(2060, 1, 1),
        timezones=st.just(ZoneInfo(tz)),
    )


def is_boundary(start: datetime, anchor: datetime, interval: str, tz: str) -> bool:
    """Whether ``start`` is a boundary by the documented rule, computed independently."""
    if start == anchor:
        return True
    zone = ZoneInfo(tz)
    if interval == "hour":
        return (start - anchor) % timedelta(hours=1) == timedelta(0)
    wall = anchor.astimezone(zone).replace(tzinfo=None)
    start_local = start.astimezone(zone).replace(tzinfo=None)
    candidates: list[date] = []
    if interval == "day":
        candidates = [start_local.date(), start_local.date() - timedelta(days=1)]
    else:
        first_of_month = start_local.date().replace(day=1)
        for month_start in (first_of_month, (first_of_month - timedelta(days=1)).replace(day=1)):
            last_day = calendar.monthrange(month_start.year, month_start.month)[1]
            candidates.append(month_start.replace(day=min(wall.day, last_day)))
    return any(resolve(datetime.combine(d, wall.time()), tz) == start for d in candidates)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), tz=zones, interval=intervals, instant=instants)
def test_periods_contain_their_instants_and_tile_time(
    data: st.DataObject, tz: str, interval: str, instant: datetime
) -> None:
    anchor = data.draw(anchors_in(tz), label="anchor")

    def containing(at: datetime) -> Period:
        return period_containing(at, anchor=anchor, interval=interval, tz=tz)

    period = containing(instant)

    assert period.start <= instant < period.end
    assert period.start < period.end
    assert period.start.tzinfo is UTC and period.end.tzinfo is UTC
    following = next_period(instant, anchor=anchor, interval=interval, tz=tz)
    assert following.start == period.end
    assert following.start < following.end
    assert previous_period(instant, anchor=anchor, interval=interval, tz=tz).end == period.start
    assert containing(period.start) == period
    assert containing(period.end - ONE_MICROSECOND) == period
    assert is_boundary(period.start, anchor, interval, tz)
    assert is_boundary(period.end, anchor, interval, tz)
    if interval == "hour":
        assert period.end - period.start == timedelta(hours=1)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), tz=zones, interval=intervals, start=instants)
def test_periods_between_are_contiguous_and_cover_the_range(
    data: st.DataObject, tz: str, interval: str, start: datetime
) -> None:
    anchor = data.draw(anchors_in(tz), label="anchor")
    # About 70 periods at most, whatever the interval, to keep the walk short.
    longest = {"hour": timedelta(days=3), "day": timedelta(days=70), "month": timedelta(days=2000)}
    end = start + data.draw(
        st.timedeltas(min_value=ONE_MICROSECOND, max_value=longest[interval]), label="length"
    )

    found = list(periods_between(start, end, anchor=anchor, interval=interval, tz=tz))

    assert found[0].start <= start < found[0].end
    assert found[-1].start < end <= found[-1].end
    for a, b in pairwise(found):
        assert a.start < a.end == b.start < b.end
