"""metering.aggregations: each aggregation defined once, partials that merge like their events,
grouped queries with exact values, and decimals exact on both engines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db.models.functions import TruncHour
from hypothesis import given
from hypothesis import strategies as st

from billing_project.db import DecimalMax, DecimalSum
from billing_project.sqlite import functions as sqlite_functions
from metering import aggregation, aggregations, services
from metering.aggregations import Latest, Partial
from metering.models import Meter, UsageEvent, UsageRollup
from tests.factories import CustomerFactory, MeterFactory

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
T = NOW - timedelta(hours=5)  # 07:00, a whole hour
D = Decimal


# --- The definitions -------------------------------------------------------------------------


def test_every_meter_aggregation_has_one_definition():
    assert set(aggregations.BY_CODE) == set(Meter.Aggregation.values)
    assert aggregations.ADDITIVE == {"sum", "count"}
    assert [a.code for a in aggregations.BY_CODE.values() if a.whole] == ["count", "unique_count"]
    assert [a.code for a in aggregations.BY_CODE.values() if not a.mergeable] == ["unique_count"]
    assert aggregations.COUNT.default_quantity == D(1)
    assert [a.default_quantity for a in (aggregations.SUM, aggregations.MAX)] == [None, None]
    with pytest.raises(ValueError, match="unknown aggregation 'median'"):
        aggregations.by_code("median")


def test_a_meter_gets_its_aggregation_with_its_property():
    meter = Meter(code="agents", aggregation="unique_count", unique_property="agent_id")
    got = aggregations.of(meter)
    assert (got.code, got.unique_property, got.mergeable) == ("unique_count", "agent_id", False)
    assert aggregations.of(meter) is got  # one object per property
    assert aggregations.of(Meter(code="t", aggregation="sum")) is aggregations.SUM
    with pytest.raises(TypeError, match="counted over events"):
        got.quantity(Partial())


def test_quantities_read_off_a_partial():
    partial = Partial.of_event(pk=7, at=T, quantity=D("2.5")).merge(
        Partial.of_event(pk=3, at=T + timedelta(minutes=1), quantity=D("1.5"))
    )
    assert aggregations.SUM.quantity(partial) == D("4.0")
    assert aggregations.COUNT.quantity(partial) == D(2)
    assert aggregations.MAX.quantity(partial) == D("2.5")
    assert aggregations.LATEST.quantity(partial) == D("1.5")
    assert [a.quantity(None) for a in (aggregations.SUM, aggregations.LATEST)] == [D(0), D(0)]
    assert partial.first_at == T
    assert partial.last_at == T + timedelta(minutes=1)


def test_the_latest_of_equal_timestamps_is_the_higher_event_id():
    first = Partial.of_event(pk=5, at=T, quantity=D(9))
    second = Partial.of_event(pk=6, at=T, quantity=D(1))
    assert first.merge(second).latest == second.merge(first).latest == Latest(T, 6, D(1))


_events = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=600),  # minutes after T
        st.decimals(min_value=0, max_value=10**12, places=6, allow_nan=False),
    ),
    min_size=1,
    max_size=30,
)


@given(events=_events, cut=st.integers(min_value=0, max_value=30))
def test_partials_merge_exactly_like_their_events(events, cut):
    """The partial of two groups merged is the partial of all their events, whatever the
    split: what lets rollups of hours add up to a window."""
    parts = [
        Partial.of_event(pk=pk, at=T + timedelta(minutes=m), quantity=q)
        for pk, (m, q) in enumerate(events, start=1)
    ]

    def fold(group):
        result = Partial()
        for part in group:
            result = result.merge(part)
        return result

    whole = fold(parts)
    assert fold(parts[:cut]).merge(fold(parts[cut:])) == whole
    assert whole.total == sum((q for _, q in events), D(0))
    assert whole.count == len(events)
    assert whole.top == max(q for _, q in events)
    latest_pk, (latest_minute, latest_q) = max(
        enumerate(events, start=1), key=lambda item: (item[1][0], item[0])
    )
    assert whole.latest == Latest(T + timedelta(minutes=latest_minute), latest_pk, latest_q)


# --- Queries over events and rollups ---------------------------------------------------------


@pytest.fixture
def usage(db, service_key):
    """Two customers' events on a meter of each aggregation, within 07:00-09:00."""
    acme = CustomerFactory(external_id="acme")
    globex = CustomerFactory(external_id="globex")
    meters = {
        "tokens": MeterFactory(code="tokens", aggregation="sum"),
        "tasks": MeterFactory(code="tasks", aggregation="count"),
        "seats": MeterFactory(code="seats", aggregation="max"),
        "level": MeterFactory(code="level", aggregation="latest"),
        "agents": MeterFactory(
            code="agents", aggregation="unique_count", unique_property="agent_id"
        ),
    }
    rows = [
        # (event id, customer, meter, quantity, minutes after T, agent)
        ("a01", "acme", "tokens", "0.1", 0, "x"),
        ("a02", "acme", "tokens", "0.2", 70, "y"),
        ("a03", "acme", "tokens", "999999999999.999999", 80, None),
        ("a04", "acme", "tasks", None, 5, "x"),
        ("a05", "acme", "tasks", None, 65, "x"),
        ("a06", "acme", "seats", "9", 10, None),
        ("a07", "acme", "seats", "10", 75, None),
        ("a08", "acme", "level", "4", 20, None),
        ("a09", "acme", "level", "3", 90, None),
        ("a10", "acme", "level", "8", 90, None),  # same instant as a09, a higher id: latest
        ("a11", "acme", "agents", "1", 1, "x"),
        ("a12", "acme", "agents", "1", 61, 5),  # the number 5 ...
        ("a13", "acme", "agents", "1", 62, "5"),  # ... and the string "5" are one value
        ("a14", "acme", "agents", "1", 63, None),  # no property: not counted
        ("g01", "globex", "tokens", "7", 30, "z"),
        ("g02", "globex", "level", "6", 30, None),
    ]
    events = []
    for event_id, customer, meter, quantity, minutes, agent in rows:
        event = {
            "event_id": event_id,
            "customer_id": customer,
            "meter": meters[meter].code,
            "timestamp": (T + timedelta(minutes=minutes)).isoformat(),
            "properties": {} if agent is None else {"agent_id": agent},
        }
        if quantity is not None:
            event["quantity"] = quantity
        events.append(event)
    services.record_usage_events(api_key=service_key[0], raw_events=events, now=NOW)
    return acme, globex, meters


def test_measure_events_groups_by_customer_and_meter(usage):
    acme, globex, meters = usage
    kinds = aggregations.of_meters({m.pk: m for m in meters.values()})
    got = aggregations.measure_events(
        UsageEvent.objects.all(), aggregations=kinds, group_by=("customer_id",)
    )
    quantities = {
        (customer_id, meter_id): found.quantity for (customer_id, meter_id), found in got.items()
    }
    m = {code: meter.pk for code, meter in meters.items()}
    assert quantities == {
        (acme.pk, m["tokens"]): D("1000000000000.299999"),
        (acme.pk, m["tasks"]): D(2),
        (acme.pk, m["seats"]): D(10),
        (acme.pk, m["level"]): D(8),
        (acme.pk, m["agents"]): D(2),
        (globex.pk, m["tokens"]): D(7),
        (globex.pk, m["level"]): D(6),
    }
    tokens = got[(acme.pk, m["tokens"])]
    assert (tokens.count, tokens.first_at, tokens.last_at) == (
        3,
        T,
        T + timedelta(minutes=80),
    )


def test_rollups_are_the_partials_of_their_hours(usage):
    acme, _, meters = usage
    latest_of = [meters["level"].pk]
    from_events = aggregations.summarize_events(
        UsageEvent.objects.filter(customer=acme).annotate(hour=TruncHour("timestamp", tzinfo=UTC)),
        group_by=("hour",),
        latest_of=latest_of,
    )
    from_rollups = aggregations.summarize_rollups(
        UsageRollup.objects.filter(customer=acme).annotate(hour_key=TruncHour("hour", tzinfo=UTC)),
        group_by=("hour_key",),
        latest_of=latest_of,
    )
    assert set(from_rollups) == set(from_events)
    for key, partial in from_events.items():
        rolled = from_rollups[key]
        assert (rolled.total, rolled.count, rolled.top) == (
            partial.total,
            partial.count,
            partial.top,
        )
        assert rolled.latest == partial.latest
    level = meters["level"].pk
    assert from_rollups[(T + timedelta(hours=1), level)].latest.quantity == D(8)


def test_window_quantities_equal_the_events_for_every_aggregation(usage):
    acme, _, meters = usage
    by_pk = {m.pk: m for m in meters.values()}
    for start, end in [
        (T, T + timedelta(hours=2)),  # whole hours
        (T + timedelta(minutes=30), T + timedelta(hours=1, minutes=30)),  # no whole hour
        (T - timedelta(minutes=15), T + timedelta(hours=1, minutes=45)),  # both
    ]:
        from_events = {
            pk: u.quantity
            for pk, u in aggregation.summarize_window(
                customer_id=acme.pk, start=start, end=end, meters=by_pk
            ).items()
        }
        assert (
            aggregation.window_quantities(customer_id=acme.pk, start=start, end=end, meters=by_pk)
            == from_events
        )
    whole = aggregation.window_quantities(
        customer_id=acme.pk, start=T, end=T + timedelta(hours=2), meters=by_pk
    )
    assert whole[meters["level"].pk] == D(8)
    assert whole[meters["agents"].pk] == D(2)


def test_count_distinct_ignores_mergeable_meters_and_groups(usage):
    acme, _, meters = usage
    kinds = aggregations.of_meters({m.pk: m for m in meters.values()})
    counted = aggregations.count_distinct(
        UsageEvent.objects.filter(customer=acme).annotate(hour=TruncHour("timestamp", tzinfo=UTC)),
        aggregations=kinds,
        group_by=("hour",),
    )
    agents = meters["agents"].pk
    assert counted == {(T, agents): D(1), (T + timedelta(hours=1), agents): D(1)}


# --- Exact decimals on every engine ----------------------------------------------------------


def test_sums_and_maxima_of_decimals_are_exact(usage):
    acme, _, meters = usage
    events = UsageEvent.objects.filter(customer=acme)
    tokens = events.filter(meter=meters["tokens"]).aggregate(
        total=DecimalSum("quantity"), top=DecimalMax("quantity")
    )
    # 0.1 + 0.2 is 0.30000000000000004 in floating point; 19 digits do not fit in a double
    assert tokens == {"total": D("1000000000000.299999"), "top": D("999999999999.999999")}
    seats = events.filter(meter=meters["seats"]).aggregate(top=DecimalMax("quantity"))
    assert seats == {"top": D(10)}  # 10 > 9 as numbers (as text, "9" > "10")
    stored = UsageEvent.objects.get(event_id="a03").quantity
    assert stored == D("999999999999.999999")
    assert str(stored) == "999999999999.999999"


def test_sqlite_functions_are_exact_and_read_legacy_values():
    total = sqlite_functions.DecimalSum()
    for value in ["0.1", 0.2, 3, None, "999999999999.999999"]:
        total.step(value)
    assert total.finalize() == "1000000000003.299999"
    empty = sqlite_functions.DecimalSum()
    assert empty.finalize() is None
    top = sqlite_functions.DecimalMax()
    for value in ["9", "10.5", None, 2]:
        top.step(value)
    assert top.finalize() == "10.5"
    assert sqlite_functions.decimal_add("0.1", "0.2") == "0.3"
    assert sqlite_functions.decimal_add(None, "1") is None
    assert sqlite_functions.decimal_greatest("9", "10") == "10"
    assert sqlite_functions.decimal_greatest(None, "1.5") == "1.5"
    assert sqlite_functions.decimal_greatest(None, None) is None
    # a value a database from before text decimals holds as a REAL, to 15 digits
    assert sqlite_functions.to_decimal(123456789012.346) == D("123456789012.346")
    with pytest.raises(TypeError):
        sqlite_functions.to_decimal(b"1")


def test_the_rollup_merge_sql_is_generated_for_each_engine():
    postgres = aggregations.rollup_merge_sql("postgresql", stored="r", new="EXCLUDED")
    sqlite = aggregations.rollup_merge_sql("sqlite", stored="r", new="excluded")
    assert "quantity = r.quantity + EXCLUDED.quantity" in postgres
    assert "max_quantity = GREATEST(r.max_quantity, EXCLUDED.max_quantity)" in postgres
    assert "quantity = decimal_add(r.quantity, excluded.quantity)" in sqlite
    assert "max_quantity = decimal_greatest(r.max_quantity, excluded.max_quantity)" in sqlite
    for text in (postgres, sqlite):
        assert text.count("CASE WHEN") == 3
