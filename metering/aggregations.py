"""How a meter aggregates its usage: sum, count, max, latest and unique_count, defined once.

A meter's quantity over a window (DESIGN section 2) is, by its `aggregation`:

- `sum`: the sum of its events' quantities;
- `count`: the number of its events (an event may leave its quantity out: 1);
- `max`: the largest quantity;
- `latest`: the quantity of the latest event (by timestamp, then event id);
- `unique_count`: the number of distinct values of one property (`Meter.unique_property`).

Each is one `Aggregation` object here (`of(meter)` gives a meter's), and everything that
computes a quantity calls this module: ingestion (the hourly rollups: their SQL is generated
here), the close and reconcile (over events, through `metering.aggregation`), the usage
preview, allowance and budget check (over rollups), the portal's charts and breakdown, and
Stripe usage reports.

Partial results. The first four are mergeable: a group of events is summarized by a `Partial`
(total, count, top, latest), two partials merge into the partial of both groups, and the
quantity is read off a partial. The hourly rollups are partials, one per (customer, meter, UTC
hour); a window's quantity merges the rollups of its whole hours with the partials of the
events at its edges. unique_count is not mergeable (distinct values do not add up across
hours): it is counted over events.

Additive aggregations (sum, count): a window's quantity is the sum of its parts' quantities,
so they are reported to Stripe as increments, and extrapolated over a period.

Groups. The queries return one result per (*group_by, meter_id), `group_by` naming fields or
annotations of the queryset given (a customer, a local day, a property's value): grouping
usage by more (event dimensions) is more names in that list, nothing else.

Decimals are summed and compared exactly on both engines (`billing_project.db.DecimalSum` and
`DecimalMax`; on SQLite decimals are text and those are exact functions).

Importable without Django configured (the ingestion benchmark builds its SQL from here).
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple

from django.db.models import CharField, Count, F, Max, Min, QuerySet, Sum, Window
from django.db.models.fields.json import (  # type: ignore[attr-defined]  # not in the stubs
    KeyTextTransform,
    compile_json_path,
)
from django.db.models.functions import Cast, RowNumber

from billing_project.db import DecimalMax, DecimalSum, decimal_add_sql, decimal_greatest_sql

if TYPE_CHECKING:
    from metering.models import Meter

ZERO = Decimal(0)
_EXACT = decimal.Context(prec=60)  # sums of stored quantities never round here

Key = tuple[Any, ...]  # (*group values, meter_id)


# --- Partial results -------------------------------------------------------------------------


class Latest(NamedTuple):
    """The latest event of a group: the greatest (timestamp, event id)."""

    at: datetime
    pk: int
    quantity: Decimal


@dataclass(frozen=True, slots=True)
class Partial:
    """A mergeable summary of a group of events; an hourly rollup row is one."""

    total: Decimal = ZERO  # sum of the quantities
    count: int = 0  # events
    top: Decimal | None = None  # the largest quantity
    latest: Latest | None = None  # only where asked for (see summarize_events)
    first_at: datetime | None = None  # the earliest timestamp (from events only)
    last_at: datetime | None = None  # the latest timestamp

    @classmethod
    def of_event(cls, *, pk: int, at: datetime, quantity: Decimal) -> Partial:
        return cls(
            total=quantity,
            count=1,
            top=quantity,
            latest=Latest(at, pk, quantity),
            first_at=at,
            last_at=at,
        )

    def merge(self, other: Partial) -> Partial:
        """The partial of both groups' events together."""
        return Partial(
            total=_EXACT.add(self.total, other.total),
            count=self.count + other.count,
            top=_greater(self.top, other.top),
            latest=_greater(self.latest, other.latest),
            first_at=_lesser(self.first_at, other.first_at),
            last_at=_greater(self.last_at, other.last_at),
        )


def _greater(a: Any, b: Any) -> Any:
    return b if a is None or (b is not None and b > a) else a


def _lesser(a: Any, b: Any) -> Any:
    return b if a is None or (b is not None and b < a) else a


def merge_partials(*groups: Mapping[Key, Partial]) -> dict[Key, Partial]:
    """Partials keyed alike, merged key by key."""
    merged: dict[Key, Partial] = {}
    for group in groups:
        for key, partial in group.items():
            found = merged.get(key)
            merged[key] = partial if found is None else found.merge(partial)
    return merged


# --- The aggregations ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Aggregation:
    """One way of aggregating a meter's events into its quantity."""

    code: str  # Meter.aggregation
    # A window's quantity is the sum of its parts' quantities: reported to Stripe as
    # increments of events, extrapolated linearly over a period.
    additive: bool
    whole: bool  # its quantities are whole numbers (counts)
    # The quantity read off a Partial; None: not mergeable, counted over events.
    read: Callable[[Partial], Decimal] | None
    uses_latest: bool = False  # reading needs the partial's latest event
    default_quantity: Decimal | None = None  # an event's quantity when it gives none
    unique_property: str = ""  # unique_count: the property whose distinct values are counted

    @property
    def mergeable(self) -> bool:
        return self.read is not None

    def quantity(self, partial: Partial | None) -> Decimal:
        """The quantity of the events a partial summarizes (0 for no partial)."""
        if self.read is None:
            raise TypeError(f"{self.code} is counted over events, not read off partials")
        return ZERO if partial is None else self.read(partial)


SUM = Aggregation("sum", additive=True, whole=False, read=lambda p: p.total)
COUNT = Aggregation(
    "count",
    additive=True,
    whole=True,
    read=lambda p: Decimal(p.count),
    default_quantity=Decimal(1),
)
MAX = Aggregation(
    "max", additive=False, whole=False, read=lambda p: p.top if p.top is not None else ZERO
)
LATEST = Aggregation(
    "latest",
    additive=False,
    whole=False,
    read=lambda p: p.latest.quantity if p.latest is not None else ZERO,
    uses_latest=True,
)
UNIQUE_COUNT = Aggregation("unique_count", additive=False, whole=True, read=None)

BY_CODE: dict[str, Aggregation] = {a.code: a for a in (SUM, COUNT, MAX, LATEST, UNIQUE_COUNT)}
ADDITIVE = frozenset(code for code, a in BY_CODE.items() if a.additive)  # for queries on codes


def by_code(code: str) -> Aggregation:
    """The aggregation of a code (`Meter.aggregation`); unique_count without its property."""
    try:
        return BY_CODE[code]
    except KeyError:
        raise ValueError(f"unknown aggregation {code!r}") from None


def of(meter: Meter) -> Aggregation:
    """A meter's aggregation (unique_count with the meter's property)."""
    aggregation = by_code(meter.aggregation)
    return _unique_count(meter.unique_property) if aggregation is UNIQUE_COUNT else aggregation


@cache
def _unique_count(prop: str) -> Aggregation:
    return replace(UNIQUE_COUNT, unique_property=prop)


def of_meters(meters: Mapping[int, Meter]) -> dict[int, Aggregation]:
    """Meter id -> its aggregation, for the queries below."""
    return {pk: of(meter) for pk, meter in meters.items()}


# --- Queries ---------------------------------------------------------------------------------


class _PropertyText(KeyTextTransform):
    """`properties ->> 'prop'`: on PostgreSQL the operator itself (JSON null is NULL,
    true is 'true', 5 is '5'); on SQLite the same text spelled out, since its `->>` gives
    SQL values (true as 1) and Django's key transform gives JSON null as 'null'."""

    def as_sqlite(
        self, compiler: Any, connection: Any, **extra_context: Any
    ) -> tuple[str, tuple[Any, ...]]:
        lhs, params, key_transforms = self.preprocess_lhs(compiler, connection)
        path = compile_json_path(key_transforms)
        sql = (
            f"(CASE JSON_TYPE({lhs}, %s) WHEN 'null' THEN NULL WHEN 'true' THEN 'true' "
            f"WHEN 'false' THEN 'false' ELSE CAST(JSON_EXTRACT({lhs}, %s) AS TEXT) END)"
        )
        return sql, (*params, path, *params, path)


def property_text(prop: str) -> Cast:
    """A property's value as text, the same on both engines (NULL when absent or JSON null;
    `true` as 'true', numbers as written): the text that unique_count counts, the portal's
    breakdown shows and rate cards compare (metering.dimensions.value_text in Python). The
    cast makes lookups on it plain text comparisons (a key transform's own `exact` would
    read the compared value as JSON on SQLite)."""
    return Cast(_PropertyText(prop, "properties"), output_field=CharField())


# --- Groups of a rate card's dimensions (DESIGN 4a) -----------------------------------------


def dimension_columns(names: Sequence[str]) -> dict[str, Cast]:
    """The annotations that group events by dimensions `names`: dim_0, dim_1, ..."""
    return {f"dim_{index}": property_text(name) for index, name in enumerate(names)}


def split_by_dimensions(
    events: QuerySet[Any], *, dimensions: Mapping[int, Sequence[str]], group_by: Sequence[str] = ()
) -> list[tuple[QuerySet[Any], list[str], int]]:
    """The events to group for usage per group: (queryset, group_by, number of dimension
    columns). Meters without dimensions come first, grouped by `group_by` as ever; then, per
    distinct list of dimension names, those meters' events annotated with their values and
    grouped by `group_by` and the values. `group_key` turns a key back."""
    parts: list[tuple[QuerySet[Any], list[str], int]] = []
    plain = events.exclude(meter_id__in=sorted(dimensions)) if dimensions else events
    parts.append((plain, list(group_by), 0))
    by_names: dict[tuple[str, ...], list[int]] = {}
    for meter_id, names in sorted(dimensions.items()):
        by_names.setdefault(tuple(names), []).append(meter_id)
    for names, meter_ids in by_names.items():
        columns = dimension_columns(names)
        grouped = events.filter(meter_id__in=meter_ids).annotate(**columns)
        parts.append((grouped, [*group_by, *columns], len(names)))
    return parts


GroupKey = tuple[Key, tuple[str | None, ...]]  # ((*group_by, meter_id), dimension values)


def group_key(key: Key, width: int) -> GroupKey:
    """A key of a split query, (*group_by, *values, meter_id), as ((*group_by, meter_id),
    values); values are () for a meter without dimensions."""
    if not width:
        return key, ()
    head = len(key) - 1 - width
    return (*key[:head], key[-1]), tuple(key[head:-1])


def measure_groups(
    events: QuerySet[Any],
    *,
    aggregations: Mapping[int, Aggregation],
    dimensions: Mapping[int, Sequence[str]],
    group_by: Sequence[str] = (),
) -> dict[GroupKey, Usage]:
    """`measure_events` with the meters of `dimensions` further grouped per distinct
    combination of their dimensions' values (absent: None): one result per group."""
    found: dict[GroupKey, Usage] = {}
    for part, keys, width in split_by_dimensions(events, dimensions=dimensions, group_by=group_by):
        for key, usage in measure_events(part, aggregations=aggregations, group_by=keys).items():
            found[group_key(key, width)] = usage
    return found


def summarize_groups(
    events: QuerySet[Any],
    *,
    dimensions: Mapping[int, Sequence[str]],
    group_by: Sequence[str] = (),
    latest_of: Collection[int] = (),
) -> dict[GroupKey, Partial]:
    """`summarize_events` per group, keyed like `measure_groups`."""
    found: dict[GroupKey, Partial] = {}
    for part, keys, width in split_by_dimensions(events, dimensions=dimensions, group_by=group_by):
        for key, partial in summarize_events(part, group_by=keys, latest_of=latest_of).items():
            found[group_key(key, width)] = partial
    return found


def summarize_events(
    events: QuerySet[Any], *, group_by: Sequence[str] = (), latest_of: Collection[int] = ()
) -> dict[Key, Partial]:
    """The partial of each group of events, keyed (*group_by, meter_id): one grouped query,
    and one more for the latest event of the groups of the meters in `latest_of`."""
    keys = [*group_by, "meter_id"]
    rows = (
        events.order_by()
        .values(*keys)
        .annotate(
            agg_total=DecimalSum("quantity"),
            agg_count=Count("pk"),
            agg_top=DecimalMax("quantity"),
            agg_first=Min("timestamp"),
            agg_last=Max("timestamp"),
        )
    )
    partials = {
        _key(row, keys): Partial(
            total=row["agg_total"] or ZERO,
            count=row["agg_count"],
            top=row["agg_top"],
            first_at=row["agg_first"],
            last_at=row["agg_last"],
        )
        for row in rows
    }
    return _with_latest(
        partials, events, keys, latest_of, at="timestamp", pk="pk", value="quantity"
    )


def summarize_rollups(
    rollups: QuerySet[Any], *, group_by: Sequence[str] = (), latest_of: Collection[int] = ()
) -> dict[Key, Partial]:
    """The partials of groups of hourly rollups (the merge of their rows), keyed like
    `summarize_events`, in one grouped query and one for the latest of `latest_of` meters."""
    keys = [*group_by, "meter_id"]
    rows = (
        rollups.order_by()
        .values(*keys)
        .annotate(
            agg_total=DecimalSum("quantity"),
            agg_count=Sum("event_count"),
            agg_top=DecimalMax("max_quantity"),
            agg_last=Max("latest_at"),
        )
    )
    partials = {
        _key(row, keys): Partial(
            total=row["agg_total"] or ZERO,
            count=row["agg_count"] or 0,
            top=row["agg_top"],
            last_at=row["agg_last"],
        )
        for row in rows
    }
    return _with_latest(
        partials,
        rollups,
        keys,
        latest_of,
        at="latest_at",
        pk="latest_event_pk",
        value="latest_quantity",
    )


def _with_latest(
    partials: dict[Key, Partial],
    rows: QuerySet[Any],
    keys: list[str],
    latest_of: Collection[int],
    *,
    at: str,
    pk: str,
    value: str,
) -> dict[Key, Partial]:
    """`partials` with the latest value set for the groups of `latest_of` meters (events and
    rollups name the columns of their latest row differently: at, pk, value)."""
    wanted = set(latest_of) & {key[-1] for key in partials}
    if wanted:
        picked = _latest_per_group(
            rows.filter(meter_id__in=sorted(wanted)), keys, at=at, pk=pk, value=value
        )
        for key, latest in picked.items():
            partials[key] = replace(partials[key], latest=latest)
    return partials


def _latest_per_group(
    rows: QuerySet[Any], keys: list[str], *, at: str, pk: str, value: str
) -> dict[Key, Latest]:
    """The row with the greatest (at, pk) of each group, as a Latest (one query, a window
    function: the same SQL on both engines)."""
    ranked = (
        rows.order_by()
        .annotate(
            agg_rank=Window(
                RowNumber(),
                partition_by=[F(name) for name in keys],
                order_by=[F(at).desc(), F(pk).desc()],
            )
        )
        .filter(agg_rank=1)
        .values_list(*keys, at, pk, value)
    )
    width = len(keys)
    return {tuple(row[:width]): Latest(*row[width:]) for row in ranked}


def count_distinct(
    events: QuerySet[Any],
    *,
    aggregations: Mapping[int, Aggregation],
    group_by: Sequence[str] = (),
) -> dict[Key, Decimal]:
    """unique_count per group of events, keyed (*group_by, meter_id), for the meters of
    `aggregations` that are not mergeable (one query each; the others are ignored)."""
    keys = [*group_by, "meter_id"]
    counted: dict[Key, Decimal] = {}
    for meter_id, aggregation in sorted(aggregations.items()):
        if aggregation.mergeable:
            continue
        rows = (
            events.order_by()
            .filter(meter_id=meter_id)
            .annotate(agg_value=property_text(aggregation.unique_property))
            .values(*keys)
            .annotate(agg_distinct=Count("agg_value", distinct=True))
        )
        for row in rows:
            counted[_key(row, keys)] = Decimal(row["agg_distinct"])
    return counted


def read_quantities(
    partials: Mapping[Key, Partial],
    *,
    aggregations: Mapping[int, Aggregation],
    distinct: Mapping[Key, Decimal],
) -> dict[Key, Decimal]:
    """Each group's quantity by its meter's aggregation: read off its partial, or (not
    mergeable) its distinct count from `count_distinct` (0 if it has none)."""
    quantities: dict[Key, Decimal] = {}
    for key, partial in partials.items():
        aggregation = aggregations[key[-1]]
        quantities[key] = (
            aggregation.quantity(partial) if aggregation.mergeable else distinct.get(key, ZERO)
        )
    return quantities


@dataclass(frozen=True, slots=True)
class Usage:
    """A group's quantity by its meter's aggregation, and which events it has."""

    quantity: Decimal
    count: int  # events
    first_at: datetime | None
    last_at: datetime | None


def measure_events(
    events: QuerySet[Any],
    *,
    aggregations: Mapping[int, Aggregation],
    group_by: Sequence[str] = (),
) -> dict[Key, Usage]:
    """The usage of each group of events with any, keyed (*group_by, meter_id), in a number
    of queries that does not depend on the events (one grouped query, one for the latest
    events if a latest meter has any, one per unique_count meter that has any)."""
    partials = summarize_events(
        events,
        group_by=group_by,
        latest_of=[pk for pk, a in aggregations.items() if a.uses_latest],
    )
    present = {key[-1] for key in partials}
    distinct = count_distinct(
        events,
        aggregations={pk: a for pk, a in aggregations.items() if pk in present},
        group_by=group_by,
    )
    quantities = read_quantities(partials, aggregations=aggregations, distinct=distinct)
    return {
        key: Usage(
            quantity=quantities[key],
            count=partial.count,
            first_at=partial.first_at,
            last_at=partial.last_at,
        )
        for key, partial in partials.items()
    }


def _key(row: Mapping[str, Any], keys: Iterable[str]) -> Key:
    return tuple(row[name] for name in keys)


# The columns of a rollup row's group (UsageRollup): grouping rollups by them (and the meter)
# gives one partial per group of dimension values, keyed (names, dim_0, dim_1, dim_2, meter).
ROLLUP_GROUP = ("dimension_names", "dim_0", "dim_1", "dim_2")


# --- The hourly rollups in SQL (the ingestion statements, metering/event_store) -------------

# A rollup row is the Partial of one (customer, meter, UTC hour), in these columns.
ROLLUP_COLUMNS = "quantity, event_count, max_quantity, latest_at, latest_event_pk, latest_quantity"

# PostgreSQL: the hour of an event, and the Partial of a group of event rows (columns id,
# quantity, timestamp) as ROLLUP_COLUMNS.
ROLLUP_HOUR_SQL = "date_trunc('hour', timestamp, 'UTC')"
ROLLUP_OF_EVENTS_SQL = (
    "sum(quantity), count(*), max(quantity), max(timestamp), "
    "(array_agg(id ORDER BY timestamp DESC, id DESC))[1], "
    "(array_agg(quantity ORDER BY timestamp DESC, id DESC))[1]"
)


def rollup_hour(at: datetime) -> datetime:
    """The UTC hour an event's rollup row is for."""
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def rollup_merge_sql(vendor: str, *, stored: str, new: str) -> str:
    """The SET list of an upsert merging a new rollup row (alias `new`, e.g. EXCLUDED) into
    the stored one (`stored`): Partial.merge in SQL, for `connection.vendor`."""

    def column(name: str) -> tuple[str, str]:
        return f"{stored}.{name}", f"{new}.{name}"

    later = (
        f"({new}.latest_at, {new}.latest_event_pk) > ({stored}.latest_at, {stored}.latest_event_pk)"
    )

    def latest(name: str) -> str:
        return f"{name} = CASE WHEN {later} THEN {new}.{name} ELSE {stored}.{name} END"

    return ",\n        ".join(
        [
            f"quantity = {decimal_add_sql(vendor, *column('quantity'))}",
            f"event_count = {stored}.event_count + {new}.event_count",
            f"max_quantity = {decimal_greatest_sql(vendor, *column('max_quantity'))}",
            latest("latest_at"),
            latest("latest_quantity"),
            latest("latest_event_pk"),
        ]
    )


def rollup_row(partial: Partial) -> tuple[Decimal, int, Decimal, datetime, int, Decimal]:
    """A partial of events as the values of ROLLUP_COLUMNS."""
    assert partial.top is not None and partial.latest is not None  # a partial of events
    latest = partial.latest
    return (partial.total, partial.count, partial.top, latest.at, latest.pk, latest.quantity)
