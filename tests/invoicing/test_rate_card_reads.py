"""Fast reads with dimensions (issue 16, item 5): the hourly rollups carry the groups of the
rate cards of the customer's current plan, and every read of them gives exactly what the
events give (one definition: metering.aggregations)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction

from invoicing import selectors
from invoicing.models import PricePlan
from invoicing.services import plans, subscriptions
from invoicing.services.reconcile import reconcile
from metering import aggregation
from metering.dimensions import names_text, values_of
from metering.models import Meter, UsageEvent, UsageRollup
from portal.selectors import property_breakdown
from tests.factories import MeterFactory
from tests.invoicing.conftest import T0

pytestmark = pytest.mark.django_db
D = Decimal
BY_MODEL_AND_TYPE = ("model", "token_type")


class _Rollback(Exception):
    pass


def _plan(code: str, dimensions: dict[str, tuple[str, ...]]) -> PricePlan:
    from invoicing.rating import PriceSpec

    spec = PriceSpec("per_unit", D(1))
    return plans.create_plan_version(
        code=code,
        name=code,
        currency="USD",
        interval="day",
        prices=[
            plans.PriceInput(meter, None, names, (({}, spec),))
            for meter, names in dimensions.items()
        ],
    )


def _raw(index: int, meter: str, quantity: int, minute: int, props: dict) -> dict:
    return {
        "event_id": f"e{index}",
        "customer_id": "acme",
        "meter": meter,
        "quantity": str(quantity),
        "timestamp": (T0 + timedelta(minutes=minute)).isoformat(),
        "properties": props,
    }


@pytest.fixture
def grouped_meters(meters):
    return {
        "llm_tokens": meters["llm_tokens"],
        "agent_tasks": meters["agent_tasks"],  # count
        "seats": MeterFactory(code="seats", aggregation="latest"),
        "peak": MeterFactory(code="peak", aggregation="max"),
        "sessions": MeterFactory(
            code="sessions", aggregation="unique_count", unique_property="session"
        ),
    }


DIMENSIONS = {
    "llm_tokens": BY_MODEL_AND_TYPE,
    "agent_tasks": ("token_type",),
    "seats": ("model",),
    "peak": ("model", "token_type"),
    "sessions": ("model",),
}


def _by_pk(grouped_meters, dimensions):
    return {grouped_meters[code].pk: names for code, names in dimensions.items()}


def test_rollups_read_per_group_equal_events_read_on_random_data(
    grouped_meters, customer, record, settings
):
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings
    from hypothesis import strategies as st

    settings.BILLING_MAX_EVENT_AGE = 3 * 86400
    meters = {m.pk: m for m in Meter.objects.all()}
    dimensions = _by_pk(grouped_meters, DIMENSIONS)
    value = st.sampled_from(["a", "b", None, True, 5, 2.5])
    event = st.tuples(
        st.sampled_from(sorted(DIMENSIONS)),
        value,
        st.sampled_from(["in", "out", None]),
        st.integers(min_value=0, max_value=400),
        st.integers(min_value=0, max_value=359),  # minute after T0: 6 hours
        st.sampled_from(["x", "y"]),
    )

    @hypothesis_settings(
        max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        events=st.lists(event, max_size=25),
        start=st.integers(min_value=-30, max_value=200),
        length=st.integers(min_value=1, max_value=420),
    )
    def check(events, start, length):
        selectors._period_prices.clear()
        try:
            with transaction.atomic():
                plan = _plan("random", DIMENSIONS)
                subscriptions.subscribe_customer(customer=customer, plan=plan, now=T0)
                raw = []
                for index, (meter, model, token_type, quantity, minute, session) in enumerate(
                    events
                ):
                    props = {"session": session, "token_type": token_type}
                    if model is not None or index % 2:
                        props["model"] = model  # an explicit null on odd events
                    raw.append(_raw(index, meter, quantity, minute, props))
                if raw:
                    record(raw, now=T0 + timedelta(hours=7))
                window = {
                    "customer_id": customer.pk,
                    "start": T0 + timedelta(minutes=start),
                    "end": T0 + timedelta(minutes=start + length),
                    "meters": meters,
                    "dimensions": dimensions,
                }
                expected = {
                    key: usage.quantity
                    for key, usage in aggregation.summarize_window_groups(**window).items()
                }
                assert aggregation.window_group_quantities(**window) == expected
                # The mergeable meters were answered by rollups, not by their events.
                _, from_events = aggregation.window_group_partials(**window)
                if length >= 120:
                    assert from_events == {grouped_meters["sessions"].pk}
                # Each rollup row is one group of the plan's dimensions, and they reconcile.
                for row in UsageRollup.objects.all():
                    code = meters[row.meter_id].code
                    assert row.dimension_names == names_text(DIMENSIONS[code])
                assert reconcile() == []
                raise _Rollback
        except _Rollback:
            pass

    check()


def _tokens(record, events, *, now=T0 + timedelta(hours=3)):
    record(
        [
            _raw(i, "llm_tokens", q, minute, {"model": m, "token_type": t})
            for i, (m, t, q, minute) in enumerate(events)
        ],
        now=now,
    )


STREAM = [
    ("large", "in", 100, 5),
    ("large", "out", 40, 65),
    ("small", "in", 7, 70),
    ("large", "in", 1, 130),
    (None, "out", 3, 131),
]


def test_rollups_written_under_other_dimensions_fall_back_to_events(meters, customer, record):
    plan = _plan("narrow", {"llm_tokens": ("model",)})
    subscriptions.subscribe_customer(customer=customer, plan=plan, now=T0)
    _tokens(record, STREAM)
    tokens = meters["llm_tokens"].pk
    assert set(UsageRollup.objects.values_list("dimension_names", flat=True)) == {'["model"]'}
    # A read for the plan's own dimensions is answered by rollups...
    window = {
        "customer_id": customer.pk,
        "start": T0,
        "end": T0 + timedelta(days=1),
        "meters": {tokens: meters["llm_tokens"]},
    }
    narrow = aggregation.window_group_quantities(**window, dimensions={tokens: ("model",)})
    assert narrow == {
        (tokens, ("large",)): D(141),
        (tokens, ("small",)): D(7),
        (tokens, (None,)): D(3),
    }
    # ...and one for other dimensions (a new plan version's) reads events, with the same
    # numbers as the events give.
    wide = {tokens: BY_MODEL_AND_TYPE}
    _, from_events = aggregation.window_group_partials(**window, dimensions=wide)
    assert from_events == {tokens}
    assert aggregation.window_group_quantities(**window, dimensions=wide) == {
        (tokens, ("large", "in")): D(101),
        (tokens, ("large", "out")): D(40),
        (tokens, ("small", "in")): D(7),
        (tokens, (None, "out")): D(3),
    }
    # The meter's total merges every group's rows (the allowance of an ordinary price).
    assert aggregation.window_quantities(
        customer_id=customer.pk, start=T0, end=T0 + timedelta(days=1), meters=window["meters"]
    ) == {tokens: D(151)}


def test_a_customer_without_a_current_period_writes_ungrouped_rollups(meters, customer, record):
    _tokens(record, STREAM)
    assert set(UsageRollup.objects.values_list("group_key", flat=True)) == {""}


def test_reads_use_the_rollups_of_the_groups(meters, customer, record):
    plan = _plan("wide", {"llm_tokens": BY_MODEL_AND_TYPE})
    subscriptions.subscribe_customer(customer=customer, plan=plan, now=T0)
    _tokens(record, STREAM)
    period = customer.periods.get()
    tokens = meters["llm_tokens"].pk

    breakdown = property_breakdown(customer=customer, period=period, prop="model")
    assert [(row.value, row.events, row.quantities) for row in breakdown.rows] == [
        ("large", 3, {tokens: D(141)}),
        ("small", 1, {tokens: D(7)}),
        (None, 1, {tokens: D(3)}),
    ]
    assert breakdown.distinct_values == 3
    by_type = property_breakdown(customer=customer, period=period, prop="token_type")
    assert [(row.value, row.events, row.quantities) for row in by_type.rows] == [
        ("in", 3, {tokens: D(108)}),
        ("out", 2, {tokens: D(43)}),
    ]
    # Proof that they read the rollups, not the events: a changed rollup changes them.
    UsageRollup.objects.filter(dim_0="small").update(quantity=D(8))
    selectors._period_prices.clear()
    breakdown = property_breakdown(customer=customer, period=period, prop="model")
    assert breakdown.rows[1].quantities == {tokens: D(8)}
    usage = aggregation.window_group_quantities(
        customer_id=customer.pk,
        start=period.start,
        end=period.end,
        meters={tokens: meters["llm_tokens"]},
        dimensions={tokens: BY_MODEL_AND_TYPE},
    )
    assert usage[(tokens, ("small", "in"))] == D(8)
    # ...which reconcile reports.
    assert any("rollup of customer" in problem for problem in reconcile())


def test_a_breakdown_by_a_priced_dimension_is_of_the_meters_it_prices(meters, customer, record):
    plan = _plan("wide", {"llm_tokens": BY_MODEL_AND_TYPE})
    subscriptions.subscribe_customer(customer=customer, plan=plan, now=T0)
    _tokens(record, STREAM)
    record(
        [
            _raw(100, "agent_minutes", 9, 10, {"model": "small", "agent": "x"}),
            _raw(101, "agent_minutes", 2, 11, {"model": "tiny", "agent": "x"}),
            _raw(102, "llm_tokens", 2, 12, {"model": "tiny", "agent": "y"}),
        ],
        now=T0 + timedelta(hours=3),
    )
    period = customer.periods.get()
    tokens, minutes = meters["llm_tokens"].pk, meters["agent_minutes"].pk
    breakdown = property_breakdown(customer=customer, period=period, prop="model", limit=3)
    assert [(row.value, row.events, row.quantities) for row in breakdown.rows] == [
        ("large", 3, {tokens: D(141)}),
        ("small", 1, {tokens: D(7)}),
        ("tiny", 1, {tokens: D(2)}),  # ties by value, absent last; agent_minutes not shown
    ]
    assert breakdown.distinct_values == 4
    # The same figures as the llm_tokens events give; another property is of every meter.
    events = UsageEvent.objects.filter(customer=customer, meter_id=tokens)
    for row in breakdown.rows:
        assert row.quantities[tokens] == sum(
            e.quantity for e in events if values_of(e.properties, ["model"]) == (row.value,)
        )
    by_agent = property_breakdown(customer=customer, period=period, prop="agent")
    assert [(row.value, row.events, row.quantities) for row in by_agent.rows] == [
        (None, 5, {tokens: D(151)}),
        ("x", 2, {minutes: D(11)}),
        ("y", 1, {tokens: D(2)}),
    ]
