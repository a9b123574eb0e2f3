"""Aggregating usage events per customer, meter and window, and billing them exactly once.

Events are immutable. What a period close billed is defined by a watermark: the close holds
the customers' usage locks exclusively (ingestion holds them shared, and takes them before its
INSERT draws event ids), so when it reads the event-id sequence every event of those customers
with a lower id is committed and visible, and every later one gets a higher id. A close billing
a window for a customer therefore covers exactly the events with `timestamp` in the window and
`id` in (the customer's previous watermark, this one] -- recorded on the UsageAggregate as
(event_pk_after, event_pk_through]. An event that arrives after the close (a late event) has a
higher id and is billed by the next close, as an adjustment; no event is updated, none is billed
twice, and from an event one query finds its aggregate (and the invoice line), and back.

How each meter's events aggregate into its quantity (sum, count, max, latest, unique_count) is
defined in metering/aggregations.py; the functions here apply it to windows and record it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db import connection
from django.db.models import Max, Min, QuerySet

from metering import aggregations
from metering.dimensions import Values, dimension_key, names_text, values_of
from metering.models import Meter, UsageAggregate, UsageEvent, UsageRollup

_LOCK_NAMESPACE = 0x4D45  # "ME": keeps our advisory locks apart from anyone else's


def lock_customer_usage(customer_ids: Iterable[int], *, exclusive: bool) -> None:
    """Take the per-customer usage lock for the rest of the transaction (PostgreSQL).

    Ingestion takes it shared (batches never wait for each other); a period close takes it
    exclusive. SQLite needs nothing: it serializes all writers anyway.
    """
    if connection.vendor != "postgresql":
        return
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    keys = sorted({customer_id & 0x7FFFFFFF for customer_id in customer_ids})
    if not keys:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {function}(%s, k) FROM unnest(%s::int[]) AS k ORDER BY k",  # noqa: S608
            [_LOCK_NAMESPACE, keys],
        )


def usage_watermark() -> int:
    """The highest committed event id (a backward scan of the primary key).

    Read it while holding the usage locks of the customers being billed exclusively: then
    every event of theirs is committed and has an id <= it, and every later event of theirs
    draws a higher id from the sequence.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT max(id) FROM metering_usageevent")
        row = cursor.fetchone()
    return row[0] or 0


def previous_watermarks(customer_ids: Iterable[int]) -> dict[int, int]:
    """Each customer's watermark at its last close (0 if it never had one)."""
    rows = (
        UsageAggregate.objects.filter(customer_id__in=list(customer_ids))
        .values("customer_id")
        .annotate(through=Max("event_pk_through"))
        .values_list("customer_id", "through")
    )
    return dict(rows)


@dataclass(frozen=True, slots=True)
class WindowUsage:
    """A meter's quantity over a window (events up to a watermark), and the events that are
    new since the previous watermark."""

    meter_id: int
    quantity: Decimal  # by the meter's aggregation, over all events up to the watermark
    new_count: int
    new_first: datetime | None
    new_last: datetime | None


def _events(
    customer_id: int,
    start: datetime,
    end: datetime,
    *,
    after: int = 0,
    through: int | None = None,
) -> QuerySet[UsageEvent]:
    events = UsageEvent.objects.filter(
        customer_id=customer_id, timestamp__gte=start, timestamp__lt=end
    )
    if after:
        events = events.filter(pk__gt=after)
    if through is not None:
        events = events.filter(pk__lte=through)
    return events


Dimensions = Mapping[int, Sequence[str]]  # meter id -> its price's dimension names (DESIGN 4a)


def summarize_window(
    *,
    customer_id: int,
    start: datetime,
    end: datetime,
    meters: dict[int, Meter] | None = None,
    after: int = 0,
    through: int | None = None,
) -> dict[int, WindowUsage]:
    """Aggregate each meter's events in [start, end) with SQL (never a loop over events):
    the quantity over events with id <= through, the new ones those with id > after."""
    groups = summarize_window_groups(
        customer_id=customer_id, start=start, end=end, meters=meters, after=after, through=through
    )
    return {meter_id: usage for (meter_id, _), usage in groups.items()}


def summarize_window_groups(
    *,
    customer_id: int,
    start: datetime,
    end: datetime,
    meters: dict[int, Meter] | None = None,
    dimensions: Dimensions | None = None,
    after: int = 0,
    through: int | None = None,
) -> dict[tuple[int, Values], WindowUsage]:
    """`summarize_window` per group: keyed (meter id, values), the meters of `dimensions`
    per distinct combination of their dimensions' values, the others with values ()."""
    dimensions = dimensions or {}
    events = _events(customer_id, start, end, through=through)
    if meters is None:
        meters = {m.pk: m for m in Meter.objects.all()}
    else:
        events = events.filter(meter_id__in=sorted(meters))
    totals = aggregations.measure_groups(
        events, aggregations=aggregations.of_meters(meters), dimensions=dimensions
    )
    new = aggregations.summarize_groups(events.filter(pk__gt=after), dimensions=dimensions)
    result: dict[tuple[int, Values], WindowUsage] = {}
    for ((meter_id,), values), usage in totals.items():
        fresh = new.get(((meter_id,), values))
        result[(meter_id, values)] = WindowUsage(
            meter_id=meter_id,
            quantity=usage.quantity,
            new_count=fresh.count if fresh else 0,
            new_first=fresh.first_at if fresh else None,
            new_last=fresh.last_at if fresh else None,
        )
    return result


def bill_usage_window(
    *,
    customer_id: int,
    window_start: datetime,
    window_end: datetime,
    billed_through: datetime,
    kind: str,
    after: int,
    through: int,
    always_meter_ids: Iterable[int] = (),
    dimensions: Dimensions | None = None,
) -> list[UsageAggregate]:
    """Write one aggregate per group (a meter, or a meter of `dimensions` and one
    combination of its dimensions' values) with events in the window and id in
    (after, through].

    Call inside a transaction holding `lock_customer_usage(..., exclusive=True)`, with
    `through` read by `usage_watermark()` under that lock. Meters in `always_meter_ids` get an
    aggregate even without events. The group's previous aggregates in the window give the
    quantity already billed, so `quantity` is the increase and `cumulative_quantity` the new
    total: a late event is rated at its own group's margin.
    """
    dimensions = dimensions or {}
    meters = {m.pk: m for m in Meter.objects.all()}
    usage = summarize_window_groups(
        customer_id=customer_id,
        start=window_start,
        end=window_end,
        meters=meters,
        dimensions=dimensions,
        after=after,
        through=through,
    )
    billed_before = _billed_cumulative(customer_id, window_start)
    wanted = {key for key, u in usage.items() if u.new_count}
    wanted |= {(meter_id, ()) for meter_id in always_meter_ids if meter_id not in dimensions}
    aggregates: list[UsageAggregate] = []
    for meter_id, values in sorted(wanted, key=lambda k: (k[0], [v or "" for v in k[1]])):
        current = usage.get((meter_id, values))
        cumulative = current.quantity if current else Decimal(0)
        key = dimension_key(values)
        aggregates.append(
            UsageAggregate.objects.create(
                customer_id=customer_id,
                meter_id=meter_id,
                dimensions=(
                    dict(zip(dimensions[meter_id], values, strict=True)) if values else None
                ),
                dimension_key=key,
                kind=kind,
                window_start=window_start,
                window_end=window_end,
                billed_through=billed_through,
                event_pk_after=after,
                event_pk_through=through,
                quantity=cumulative - billed_before.get((meter_id, key), Decimal(0)),
                cumulative_quantity=cumulative,
                event_count=current.new_count if current else 0,
                first_event_at=current.new_first if current else None,
                last_event_at=current.new_last if current else None,
            )
        )
    return aggregates


def _billed_cumulative(customer_id: int, window_start: datetime) -> dict[tuple[int, str], Decimal]:
    """The cumulative quantity last billed per group (meter, dimension key) for a window
    (latest close wins)."""
    rows = (
        UsageAggregate.objects.filter(customer_id=customer_id, window_start=window_start)
        .order_by("meter_id", "dimension_key", "-billed_through")
        .values_list("meter_id", "dimension_key", "cumulative_quantity")
    )
    billed: dict[tuple[int, str], Decimal] = {}
    for meter_id, key, cumulative in rows:
        billed.setdefault((meter_id, key), cumulative)
    return billed


def earliest_unbilled_before(
    *, customer_id: int, before: datetime, after: int, through: int
) -> datetime | None:
    """The time of the earliest event before an instant that arrived after the customer's
    previous close (id in (after, through]): a late event, or one from before the first period."""
    return (
        _events(customer_id, datetime.min.replace(tzinfo=UTC), before, after=after, through=through)
        .order_by("timestamp")
        .values_list("timestamp", flat=True)
        .first()
    )


def aggregates_covering(event: UsageEvent) -> list[UsageAggregate]:
    """The aggregates whose window, id range and group hold an event (exactly one once it
    is billed): one query for the window and id range, the group picked from its rows."""
    candidates = UsageAggregate.objects.filter(
        customer_id=event.customer_id,
        meter_id=event.meter_id,
        window_start__lte=event.timestamp,
        window_end__gt=event.timestamp,
        event_pk_after__lt=event.pk,
        event_pk_through__gte=event.pk,
    ).order_by("pk")
    return [agg for agg in candidates if in_group(event, agg.dimensions)]


def in_group(event: UsageEvent, dimensions: Mapping[str, str | None] | None) -> bool:
    """Whether an event belongs to an aggregate's group (any event, for no dimensions)."""
    if not dimensions:
        return True
    values = values_of(event.properties or {}, list(dimensions))
    return values == tuple(dimensions.values())


def events_of_aggregate(aggregate: UsageAggregate) -> QuerySet[UsageEvent]:
    """The events an aggregate billed (one indexed query; a group's values filter it)."""
    events = _events(
        aggregate.customer_id,
        aggregate.window_start,
        aggregate.window_end,
        after=aggregate.event_pk_after,
        through=aggregate.event_pk_through,
    ).filter(meter_id=aggregate.meter_id)
    return in_group_filter(events, aggregate.dimensions)


def in_group_filter(
    events: QuerySet[UsageEvent], dimensions: Mapping[str, str | None] | None
) -> QuerySet[UsageEvent]:
    """Events of one group of dimension values (all of them, for no dimensions)."""
    if not dimensions:
        return events
    columns = aggregations.dimension_columns(list(dimensions))
    events = events.annotate(**columns)
    for column, value in zip(columns, dimensions.values(), strict=True):
        events = events.filter(**{f"{column}__isnull": True} if value is None else {column: value})
    return events


def _ceil_hour(instant: datetime) -> datetime:
    floor = aggregations.rollup_hour(instant)
    return floor if floor == instant else floor + timedelta(hours=1)


def window_quantities(
    *, customer_id: int, start: datetime, end: datetime, meters: dict[int, Meter]
) -> dict[int, Decimal]:
    """Each meter's aggregated quantity in [start, end), read from the hourly rollups.

    Whole UTC hours come from rollups, merged with the events of the partial hours at the
    edges (periods aligned to a zone with a :30 or :45 offset); unique_count meters (not
    mergeable) are counted over the window's events. The result equals
    `summarize_window(...)[m].quantity` for every meter (reconcile and the tests check it),
    at a cost that does not grow with the number of events.
    """
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    inner_start, inner_end = _ceil_hour(start), aggregations.rollup_hour(end)
    if inner_start >= inner_end:
        return {
            m: u.quantity
            for m, u in summarize_window(
                customer_id=customer_id, start=start, end=end, meters=meters
            ).items()
            if m in meters
        }
    kinds = aggregations.of_meters(meters)
    latest_of = [pk for pk, kind in kinds.items() if kind.uses_latest]
    rollups = UsageRollup.objects.filter(
        customer_id=customer_id, hour__gte=inner_start, hour__lt=inner_end
    ).filter(meter_id__in=sorted(meters))
    parts = [aggregations.summarize_rollups(rollups, latest_of=latest_of)]
    for edge_start, edge_end in ((start, inner_start), (inner_end, end)):
        if edge_start < edge_end:
            edge = _events(customer_id, edge_start, edge_end).filter(meter_id__in=sorted(meters))
            parts.append(aggregations.summarize_events(edge, latest_of=latest_of))
    partials = aggregations.merge_partials(*parts)
    present = {meter_id for (meter_id,) in partials}
    distinct = aggregations.count_distinct(
        _events(customer_id, start, end),
        aggregations={pk: kind for pk, kind in kinds.items() if pk in present},
    )
    quantities = aggregations.read_quantities(partials, aggregations=kinds, distinct=distinct)
    return {meter_id: quantity for (meter_id,), quantity in quantities.items()}


def window_group_partials(
    *,
    customer_id: int,
    start: datetime,
    end: datetime,
    meters: dict[int, Meter],
    dimensions: Dimensions,
) -> tuple[dict[tuple[int, Values], aggregations.Partial], set[int]]:
    """The partial of each group of the meters of `dimensions` in [start, end), from the
    hourly rollups that carry those groups (DESIGN 4a), and the meters the rollups cannot
    answer, to be read from events: those not mergeable (unique_count), those with a rollup
    row in the window grouped by other dimension names than `dimensions` gives (rows
    written while another plan version, or none, was current), and all of them for a window
    shorter than a whole hour. Whole UTC hours come from rollups, the edges from events,
    as in `window_quantities`. Keyed (meter id, values), values in `dimensions` order; the
    meters of `meters` without dimensions are ignored."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    inner_start, inner_end = _ceil_hour(start), aggregations.rollup_hour(end)
    kinds = aggregations.of_meters(meters)
    answered = {pk for pk in meters if pk in dimensions and kinds[pk].mergeable}
    grouped = {pk for pk in meters if pk in dimensions}
    if inner_start >= inner_end:
        return {}, grouped
    latest_of = [pk for pk in answered if kinds[pk].uses_latest]
    rollups = UsageRollup.objects.filter(
        customer_id=customer_id,
        hour__gte=inner_start,
        hour__lt=inner_end,
        meter_id__in=sorted(answered),
    )
    found: dict[tuple[int, Values], aggregations.Partial] = {}
    mismatched: set[int] = set()
    rows = aggregations.summarize_rollups(
        rollups, group_by=aggregations.ROLLUP_GROUP, latest_of=latest_of
    )
    for (names, *values, meter_id), partial in rows.items():
        if names != names_text(dimensions[meter_id]):
            mismatched.add(meter_id)
        else:
            found[(meter_id, tuple(values[: len(dimensions[meter_id])]))] = partial
    answered -= mismatched
    parts = [{key: p for key, p in found.items() if key[0] in answered}]
    for edge_start, edge_end in ((start, inner_start), (inner_end, end)):
        if answered and edge_start < edge_end:
            edge = _events(customer_id, edge_start, edge_end).filter(meter_id__in=sorted(answered))
            groups = aggregations.summarize_groups(
                edge, dimensions={pk: dimensions[pk] for pk in answered}, latest_of=latest_of
            )
            parts.append({(meter_id, values): p for ((meter_id,), values), p in groups.items()})
    return aggregations.merge_partials(*parts), grouped - answered


def window_group_quantities(
    *,
    customer_id: int,
    start: datetime,
    end: datetime,
    meters: dict[int, Meter],
    dimensions: Dimensions,
) -> dict[tuple[int, Values], Decimal]:
    """Each group's quantity in [start, end): meters without dimensions from the rollups
    (`window_quantities`, values ()), the meters of `dimensions` per group of their values,
    from the rollups that carry their groups (`window_group_partials`) or, where those
    cannot answer, counted over the window's events. Equal to `summarize_window_groups`
    (the tests compare them on random data)."""
    plain = {pk: m for pk, m in meters.items() if pk not in dimensions}
    result: dict[tuple[int, Values], Decimal] = {
        (meter_id, ()): quantity
        for meter_id, quantity in window_quantities(
            customer_id=customer_id, start=start, end=end, meters=plain
        ).items()
        if meter_id in plain
    }
    grouped = {pk: m for pk, m in meters.items() if pk in dimensions}
    if not grouped:
        return result
    kinds = aggregations.of_meters(grouped)
    partials, from_events = window_group_partials(
        customer_id=customer_id, start=start, end=end, meters=grouped, dimensions=dimensions
    )
    for (meter_id, values), partial in partials.items():
        result[(meter_id, values)] = kinds[meter_id].quantity(partial)
    if from_events:
        events = _events(customer_id, start, end).filter(meter_id__in=sorted(from_events))
        usage = aggregations.measure_groups(
            events,
            aggregations={pk: kinds[pk] for pk in from_events},
            dimensions={pk: dimensions[pk] for pk in from_events},
        )
        for ((meter_id,), values), found in usage.items():
            result[(meter_id, values)] = found.quantity
    return result


def summarize_customers(
    *,
    customer_ids: list[int],
    start: datetime,
    end: datetime,
    meters: dict[int, Meter],
    through: int,
    dimensions: Dimensions | None = None,
) -> dict[tuple[int, int, Values], WindowUsage]:
    """The usage of many customers over one never-billed window, keyed by (customer, meter,
    values) (values () for meters without dimensions), in a constant number of queries
    whatever the number of customers or events: the batch close's aggregation, over the
    events with id <= through."""
    events = UsageEvent.objects.filter(
        customer_id__in=customer_ids, timestamp__gte=start, timestamp__lt=end, pk__lte=through
    )
    usage = aggregations.measure_groups(
        events,
        aggregations=aggregations.of_meters(meters),
        dimensions=dimensions or {},
        group_by=("customer_id",),
    )
    return {
        (customer_id, meter_id, values): WindowUsage(
            meter_id=meter_id,
            quantity=found.quantity,
            new_count=found.count,
            new_first=found.first_at,
            new_last=found.last_at,
        )
        for ((customer_id, meter_id), values), found in usage.items()
    }


def late_customers(
    *, customer_ids: list[int], before: dict[int, datetime], after: dict[int, int], through: int
) -> set[int]:
    """The customers with an event before their period's start that arrived after their
    previous close (one query): they need adjustment lines."""
    if not customer_ids:
        return set()
    rows = (
        UsageEvent.objects.filter(
            customer_id__in=customer_ids, timestamp__lt=max(before.values()), pk__lte=through
        )
        .filter(pk__gt=min(after.get(c, 0) for c in customer_ids))
        .values("customer_id")
        .annotate(first=Min("timestamp"))
    )
    late: set[int] = set()
    for row in rows:
        customer_id = row["customer_id"]
        if row["first"] < before[customer_id] and earliest_unbilled_before(
            customer_id=customer_id,
            before=before[customer_id],
            after=after.get(customer_id, 0),
            through=through,
        ):
            late.add(customer_id)
    return late
