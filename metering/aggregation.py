"""Aggregating usage events per customer, meter and window, and billing them exactly once.

The close of a billing period (in invoicing) calls `bill_usage_window` for the period itself and
for each earlier window that received late events. Each call writes one UsageAggregate per meter
and stamps the events it covers with it, inside the caller's transaction, while the customer's
usage lock is held exclusively: ingestion holds the same lock in shared mode, so no event of that
customer can commit between the aggregation and the stamping. An event is therefore billed by
exactly one aggregate, and one that arrives later is found unstamped by the next close.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db import connection
from django.db.models import Count, Max, Min, QuerySet, Sum
from django.db.models.fields.json import KeyTextTransform

from metering.models import Meter, UsageAggregate, UsageEvent, UsageRollup

_LOCK_NAMESPACE = 0x4D45  # "ME": keeps our advisory locks apart from anyone else's


def lock_customer_usage(customer_ids: Iterable[int], *, exclusive: bool) -> None:
    """Take the per-customer usage lock for the rest of the transaction (PostgreSQL).

    Ingestion takes it shared (batches never wait for each other); a period close takes it
    exclusive for one customer. SQLite needs nothing: it serializes all writers anyway.
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


@dataclass(frozen=True, slots=True)
class WindowUsage:
    """A meter's aggregated quantity over a window, and the events not yet billed in it."""

    meter_id: int
    quantity: Decimal  # by the meter's aggregation, over all events in the window
    unbilled_count: int
    unbilled_first: datetime | None
    unbilled_last: datetime | None


def _events(customer_id: int, start: datetime, end: datetime) -> QuerySet[UsageEvent]:
    return UsageEvent.objects.filter(
        customer_id=customer_id, timestamp__gte=start, timestamp__lt=end
    )


def summarize_window(
    *,
    customer_id: int,
    start: datetime,
    end: datetime,
    meters: dict[int, Meter] | None = None,
    billed_only: bool = False,
) -> dict[int, WindowUsage]:
    """Aggregate each meter's events in [start, end) with SQL (never a loop over events);
    `billed_only` restricts it to events an aggregate has billed (for reconciliation)."""
    events = _events(customer_id, start, end)
    if billed_only:
        events = events.filter(aggregate__isnull=False)
    meters = meters if meters is not None else {m.pk: m for m in Meter.objects.all()}
    totals = {
        row["meter_id"]: row
        for row in events.values("meter_id").annotate(
            total=Sum("quantity"), n=Count("id"), top=Max("quantity")
        )
    }
    unbilled = {
        row["meter_id"]: row
        for row in events.filter(aggregate__isnull=True)
        .values("meter_id")
        .annotate(n=Count("id"), first=Min("timestamp"), last=Max("timestamp"))
    }
    result: dict[int, WindowUsage] = {}
    for meter_id, row in totals.items():
        meter = meters[meter_id]
        new = unbilled.get(meter_id, {})
        result[meter_id] = WindowUsage(
            meter_id=meter_id,
            quantity=_quantity(meter, events.filter(meter_id=meter_id), row),
            unbilled_count=new.get("n", 0),
            unbilled_first=new.get("first"),
            unbilled_last=new.get("last"),
        )
    return result


def _quantity(meter: Meter, events: QuerySet[UsageEvent], row: dict) -> Decimal:
    aggregation = meter.aggregation
    if aggregation == Meter.Aggregation.SUM:
        return row["total"] or Decimal(0)
    if aggregation == Meter.Aggregation.COUNT:
        return Decimal(row["n"])
    if aggregation == Meter.Aggregation.MAX:
        return row["top"] or Decimal(0)
    if aggregation == Meter.Aggregation.UNIQUE_COUNT:
        values = (
            events.annotate(value=KeyTextTransform(meter.unique_property, "properties"))
            .exclude(value=None)
            .values("value")
            .distinct()
        )
        return Decimal(values.count())
    if aggregation == Meter.Aggregation.LATEST:
        latest = events.order_by("-timestamp", "-id").values_list("quantity", flat=True).first()
        return latest if latest is not None else Decimal(0)
    raise ValueError(f"unknown aggregation {aggregation!r}")


def bill_usage_window(
    *,
    customer_id: int,
    window_start: datetime,
    window_end: datetime,
    billed_through: datetime,
    kind: str,
    always_meter_ids: Iterable[int] = (),
) -> list[UsageAggregate]:
    """Write one aggregate per meter with unbilled events in the window and stamp those events.

    Call inside a transaction holding `lock_customer_usage(..., exclusive=True)`. Meters in
    `always_meter_ids` get an aggregate even without events (a zero line still has its source).
    The previous aggregates of the same window give the quantity already billed, so
    `quantity` is the increase and `cumulative_quantity` the new total.
    """
    meters = {m.pk: m for m in Meter.objects.all()}
    usage = summarize_window(
        customer_id=customer_id, start=window_start, end=window_end, meters=meters
    )
    billed_before = _billed_cumulative(customer_id, window_start)
    wanted = {meter_id for meter_id, u in usage.items() if u.unbilled_count} | set(always_meter_ids)
    aggregates: list[UsageAggregate] = []
    for meter_id in sorted(wanted):
        current = usage.get(meter_id)
        cumulative = current.quantity if current else Decimal(0)
        aggregate = UsageAggregate.objects.create(
            customer_id=customer_id,
            meter_id=meter_id,
            kind=kind,
            window_start=window_start,
            window_end=window_end,
            billed_through=billed_through,
            quantity=cumulative - billed_before.get(meter_id, Decimal(0)),
            cumulative_quantity=cumulative,
            event_count=current.unbilled_count if current else 0,
            first_event_at=current.unbilled_first if current else None,
            last_event_at=current.unbilled_last if current else None,
        )
        if current and current.unbilled_count:
            stamped = (
                _events(customer_id, window_start, window_end)
                .filter(meter_id=meter_id, aggregate__isnull=True)
                .update(aggregate=aggregate)
            )
            if stamped != current.unbilled_count:
                # The usage lock makes this impossible; refuse to bill rather than miscount.
                raise RuntimeError(
                    f"stamped {stamped} events but aggregated {current.unbilled_count}"
                )
        aggregates.append(aggregate)
    return aggregates


def _billed_cumulative(customer_id: int, window_start: datetime) -> dict[int, Decimal]:
    """The cumulative quantity last billed per meter for a window (latest close wins)."""
    rows = (
        UsageAggregate.objects.filter(customer_id=customer_id, window_start=window_start)
        .order_by("meter_id", "-billed_through")
        .values_list("meter_id", "cumulative_quantity")
    )
    billed: dict[int, Decimal] = {}
    for meter_id, cumulative in rows:
        billed.setdefault(meter_id, cumulative)
    return billed


def earliest_unbilled_before(*, customer_id: int, before: datetime) -> datetime | None:
    """The time of the earliest event before an instant that no aggregate has billed yet."""
    return (
        UsageEvent.objects.filter(
            customer_id=customer_id, timestamp__lt=before, aggregate__isnull=True
        )
        .order_by("timestamp")
        .values_list("timestamp", flat=True)
        .first()
    )


def _ceil_hour(instant: datetime) -> datetime:
    floor = instant.replace(minute=0, second=0, microsecond=0)
    return floor if floor == instant else floor + timedelta(hours=1)


def window_quantities(
    *, customer_id: int, start: datetime, end: datetime, meters: dict[int, Meter]
) -> dict[int, Decimal]:
    """Each meter's aggregated quantity in [start, end), read from the hourly rollups.

    Whole UTC hours come from rollups; the partial hours at the edges (periods aligned to a
    zone with a :30 or :45 offset) and unique_count meters (not additive) come from events.
    The result equals `summarize_window(...)[m].quantity` for every meter (reconcile and the
    tests check it), at a cost that does not grow with the number of events.
    """
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    inner_start, inner_end = _ceil_hour(start), end.replace(minute=0, second=0, microsecond=0)
    if inner_start >= inner_end:
        return {
            m: u.quantity
            for m, u in summarize_window(
                customer_id=customer_id, start=start, end=end, meters=meters
            ).items()
        }

    parts: dict[int, dict[str, object]] = {}

    def merge(meter_id: int, total, count, top, latest: tuple | None) -> None:
        acc = parts.setdefault(meter_id, {"sum": Decimal(0), "n": 0, "max": None, "latest": None})
        acc["sum"] += total or Decimal(0)
        acc["n"] += count or 0
        if top is not None and (acc["max"] is None or top > acc["max"]):
            acc["max"] = top
        if latest is not None and (acc["latest"] is None or latest[:2] > acc["latest"][:2]):
            acc["latest"] = latest

    rollups = UsageRollup.objects.filter(
        customer_id=customer_id, hour__gte=inner_start, hour__lt=inner_end
    )
    for row in rollups.values("meter_id").annotate(
        total=Sum("quantity"), n=Sum("event_count"), top=Max("max_quantity")
    ):
        merge(row["meter_id"], row["total"], row["n"], row["top"], None)
    latest_rows = rollups.order_by("meter_id", "-latest_at", "-latest_event_pk").values_list(
        "meter_id", "latest_at", "latest_event_pk", "latest_quantity"
    )
    if connection.vendor == "postgresql":
        latest_rows = latest_rows.distinct("meter_id")
    seen: set[int] = set()
    for meter_id, at, pk, quantity in latest_rows:
        if meter_id not in seen:
            seen.add(meter_id)
            merge(meter_id, None, None, None, (at, pk, quantity))

    for edge_start, edge_end in ((start, inner_start), (inner_end, end)):
        if edge_start >= edge_end:
            continue
        edge = _events(customer_id, edge_start, edge_end)
        for row in edge.values("meter_id").annotate(
            total=Sum("quantity"), n=Count("id"), top=Max("quantity")
        ):
            merge(row["meter_id"], row["total"], row["n"], row["top"], None)
        for meter_id in {row["meter_id"] for row in edge.values("meter_id").distinct()}:
            last = (
                edge.filter(meter_id=meter_id)
                .order_by("-timestamp", "-id")
                .values_list("timestamp", "id", "quantity")
                .first()
            )
            merge(meter_id, None, None, None, last)

    result: dict[int, Decimal] = {}
    for meter_id, acc in parts.items():
        aggregation = meters[meter_id].aggregation
        if aggregation == Meter.Aggregation.SUM:
            result[meter_id] = acc["sum"]
        elif aggregation == Meter.Aggregation.COUNT:
            result[meter_id] = Decimal(acc["n"])
        elif aggregation == Meter.Aggregation.MAX:
            result[meter_id] = acc["max"] or Decimal(0)
        elif aggregation == Meter.Aggregation.LATEST:
            result[meter_id] = acc["latest"][2] if acc["latest"] else Decimal(0)
        else:  # unique_count: distinct values are not additive across hours
            result[meter_id] = _quantity(
                meters[meter_id], _events(customer_id, start, end).filter(meter_id=meter_id), {}
            )
    return result
