"""Reads for the portal pages, always for one customer.

The money on the dashboard comes from `invoicing.selectors.preview_period_usage`, the selector
behind `GET /api/v1/customers/<id>/usage`, so the page and the API cannot disagree; the
projection rates its extrapolated quantities with the same rating engine. Both read the hourly
rollups, and so does the chart (events only for unique_count meters and zones with a :30 or
:45 offset), so the dashboard's cost does not grow with the events stored. The property
breakdown reads the period's events (properties are not rolled up): it is a separate view,
loaded after the dashboard. All are SQL aggregations, never a loop over events in Python.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.db.models import Count, Q, QuerySet, Window
from django.db.models.functions import TruncDate

from invoicing import selectors as invoicing_selectors
from invoicing.models import BillingPeriod, Invoice
from invoicing.pricing import PricingRecord, price_dimensions, rate_group
from metering import aggregation, aggregations, localtime
from metering.models import Customer, Meter, UsageEvent, UsageRollup

QUANTITY_STEP = Decimal("0.000001")  # quantities carry 6 decimal places
# A level (a latest meter) is charted, and broken down, by its peak over the day or value.
CHARTED_AS = {aggregations.LATEST.code: aggregations.MAX}
PROPERTY_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def is_property_name(name: str) -> bool:
    """A name the breakdown can split by: 1 to 64 of the characters above, and not a number.
    Django's JSON key lookups read a key that int() accepts ("5", "-5", "5_0", 40 digits) as
    an array index, which finds nothing in an object (and overflows PostgreSQL's integer)."""
    if not PROPERTY_NAME.match(name):
        return False
    try:
        int(name)
    except ValueError:
        return True
    return False


_EXACT = decimal.Context(prec=60, rounding=ROUND_HALF_UP)


def customer_zone(customer: Customer) -> ZoneInfo:
    return localtime.customer_zone(customer)


# --- Current period, rated -------------------------------------------------------------------


@dataclass(frozen=True)
class MeterUsage:
    """One meter in the current period: so far (as the API says) and projected to the end."""

    meter: Meter
    quantity: Decimal  # in meter units, as the usage API reports it
    amount_minor: int  # the usage API's amount_minor
    projected_quantity: Decimal
    projected_amount_minor: int
    pricing: PricingRecord  # how the line is priced, as the invoice line will record it
    description: str = ""  # the line's: the meter's name, and a rate card group's values


@dataclass(frozen=True)
class CurrentUsage:
    period: BillingPeriod
    currency: str
    lines: list[MeterUsage]
    elapsed_fraction: Decimal  # 0..1, how much of the period has passed
    meters: dict[int, Meter]  # every meter by id, as read for the lines

    @property
    def total_minor(self) -> int:
        return sum(line.amount_minor for line in self.lines)

    @property
    def projected_total_minor(self) -> int:
        return sum(line.projected_amount_minor for line in self.lines)

    @property
    def elapsed_percent(self) -> int:
        return int((self.elapsed_fraction * 100).to_integral_value(rounding=ROUND_HALF_UP))


def project_quantity(
    quantity: Decimal, *, aggregation: str, period: BillingPeriod, now: datetime
) -> Decimal:
    """Linear extrapolation to the period's end: quantity x length / elapsed (6 places), for
    additive aggregations (whose quantity grows with time); the others as they stand."""
    elapsed = min(now, period.end) - period.start
    length = period.end - period.start
    if not aggregations.by_code(aggregation).additive:
        return quantity
    if elapsed <= timedelta(0) or elapsed >= length:
        return quantity
    elapsed_us = Decimal(elapsed // timedelta(microseconds=1))
    length_us = Decimal(length // timedelta(microseconds=1))
    projected = _EXACT.divide(_EXACT.multiply(quantity, length_us), elapsed_us)
    return projected.quantize(QUANTITY_STEP, rounding=ROUND_HALF_UP, context=_EXACT)


def current_usage(*, customer: Customer, now: datetime) -> CurrentUsage | None:
    """The current period's lines exactly as the usage API has them, plus a projection.

    None when the customer has no plan (no period).
    """
    period = invoicing_selectors.current_period(customer=customer, now=now)
    if period is None:
        return None
    preview = invoicing_selectors.preview_period_usage(period=period)
    specs = preview.specs
    lines = []
    for line in preview.lines:
        meter = line.meter
        assert meter is not None  # usage lines always have their meter
        projected = project_quantity(
            line.quantity, aggregation=meter.aggregation, period=period, now=now
        )
        spec = specs.get(meter.pk)
        lines.append(
            MeterUsage(
                meter=meter,
                quantity=line.quantity,
                amount_minor=line.amount_minor,
                projected_quantity=projected,
                projected_amount_minor=rate_group(
                    spec, tuple(value for _, value in line.pricing.dimensions), projected
                ),
                pricing=line.pricing,
                description=line.description,
            )
        )
    length = period.end - period.start
    elapsed = max(min(now, period.end) - period.start, timedelta(0))
    fraction = Decimal(elapsed // timedelta(microseconds=1)) / Decimal(
        length // timedelta(microseconds=1)
    )
    return CurrentUsage(
        period=period,
        currency=preview.currency,
        lines=lines,
        elapsed_fraction=fraction,
        meters=preview.meters,
    )


# --- Daily usage (the chart) -----------------------------------------------------------------


@dataclass
class DailySeries:
    """One meter's usage per local day, oldest first, every day present (zeros included)."""

    meter: Meter
    days: list[tuple[date, Decimal]] = field(default_factory=list)

    @property
    def total(self) -> Decimal:
        return sum((value for _, value in self.days), Decimal(0))


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone)


def _charted(meters: dict[int, Meter]) -> dict[int, aggregations.Aggregation]:
    """Each meter's aggregation as the charts and the breakdown show it (see CHARTED_AS)."""
    return {
        pk: CHARTED_AS.get(aggregation.code, aggregation)
        for pk, aggregation in aggregations.of_meters(meters).items()
    }


def _whole_hour_offsets(zone: ZoneInfo, start: datetime, end: datetime) -> bool:
    """Whether the zone's UTC offset is a whole number of hours over the window."""
    return all(
        (moment.astimezone(zone).utcoffset() or timedelta(0)) % timedelta(hours=1) == timedelta(0)
        for moment in (start, end)
    )


def daily_usage(
    *,
    customer: Customer,
    days: int,
    now: datetime,
    meters: list[Meter] | None = None,
    all_meters: dict[int, Meter] | None = None,
) -> list[DailySeries]:
    """Usage per meter and local day over the last `days` days (today included), grouped in
    SQL by the day in the customer's time zone.

    Each meter shows its aggregation over the day (latest meters: the day's peak, see
    CHARTED_AS); unique_count meters are counted over the day's events. `meters` are
    always shown (the plan's), others only if they have usage in the window. `all_meters`
    (every meter by id) saves reading them again when the caller has them.
    """
    zone = customer_zone(customer)
    today = now.astimezone(zone).date()
    first_day = today - timedelta(days=days - 1)
    start = local_midnight(first_day, zone)
    end = local_midnight(today + timedelta(days=1), zone)
    events = UsageEvent.objects.filter(
        customer=customer, timestamp__gte=start, timestamp__lt=end
    ).annotate(day=TruncDate("timestamp", tzinfo=zone))
    if all_meters is None:
        all_meters = {m.pk: m for m in Meter.objects.all()}
    charted = _charted(all_meters)
    if _whole_hour_offsets(zone, start, end):
        # Each UTC hour lies within one local day: read the hourly rollups, not the events.
        partials = aggregations.summarize_rollups(
            UsageRollup.objects.filter(customer=customer, hour__gte=start, hour__lt=end).annotate(
                day=TruncDate("hour", tzinfo=zone)
            ),
            group_by=("day",),
        )
    else:
        partials = aggregations.summarize_events(events, group_by=("day",))
    present = {meter_id for _, meter_id in partials}
    distinct = aggregations.count_distinct(
        events,
        aggregations={pk: a for pk, a in charted.items() if pk in present},
        group_by=("day",),
    )
    values: dict[int, dict[date, Decimal]] = {}
    quantities = aggregations.read_quantities(partials, aggregations=charted, distinct=distinct)
    for (day, meter_id), quantity in quantities.items():
        values.setdefault(meter_id, {})[day] = quantity
    shown = {m.pk: m for m in meters or []} | {pk: all_meters[pk] for pk in values}
    series = []
    for meter in sorted(shown.values(), key=lambda m: m.code):
        per_day = values.get(meter.pk, {})
        series.append(
            DailySeries(
                meter=meter,
                days=[
                    (day, per_day.get(day, Decimal(0)))
                    for day in (first_day + timedelta(days=i) for i in range(days))
                ],
            )
        )
    return series


# --- Breakdown by a property -----------------------------------------------------------------


@dataclass(frozen=True)
class BreakdownRow:
    value: str | None  # None: events without the property
    events: int
    quantities: dict[int, Decimal]  # meter id -> quantity by the meter's aggregation


@dataclass(frozen=True)
class Breakdown:
    property: str
    meters: list[Meter]
    rows: list[BreakdownRow]
    distinct_values: int  # in the whole period; rows shows the top ones


def _period_events(customer: Customer, period: BillingPeriod) -> QuerySet[UsageEvent]:
    return UsageEvent.objects.filter(
        customer=customer, timestamp__gte=period.start, timestamp__lt=period.end
    )


def property_breakdown(
    *, customer: Customer, period: BillingPeriod, prop: str, limit: int = 20
) -> Breakdown:
    """The period's usage split by one property's values: the `limit` values with the most
    events, each with its quantity per meter. When `prop` is a priced dimension (a rate card
    of the period's plan prices by it), the breakdown is of the meters priced by it, read
    from the hourly rollups that carry its groups (`aggregation.window_group_partials`; the
    events only of those the rollups cannot answer). Otherwise it is of every meter, with
    two scans of the period's events (the top values with their count, then their
    quantities per meter): callers cache the result."""
    if not is_property_name(prop):
        raise ValueError(f"not a property name: {prop!r}")
    all_meters = {m.pk: m for m in Meter.objects.all()}
    charted = _charted(all_meters)
    specs = invoicing_selectors.period_price_specs(period=period) if period.plan_id else {}
    priced = {
        pk: names
        for pk, names in price_dimensions(specs).items()
        if prop in names and pk in all_meters
    }
    from_rollups: dict[str | None, dict[int, aggregations.Partial]] = {}
    events = _period_events(customer, period).annotate(value=aggregations.property_text(prop))
    if priced:
        partials, from_events = aggregation.window_group_partials(
            customer_id=customer.pk,
            start=period.start,
            end=period.end,
            meters={pk: all_meters[pk] for pk in priced},
            dimensions=priced,
        )
        for (meter_id, values), partial in partials.items():
            value = values[priced[meter_id].index(prop)]
            per_meter = from_rollups.setdefault(value, {})
            merged = per_meter.get(meter_id)
            per_meter[meter_id] = partial if merged is None else merged.merge(partial)
        # A priced dimension breaks down the meters priced by it: reading the events of the
        # others (to find the few that carry it) would scan the whole period's events.
        events = events.filter(meter_id__in=sorted(from_events))
        counts = {
            value: sum(p.count for p in per_meter.values())
            for value, per_meter in from_rollups.items()
        }
        for row in events.values("value").annotate(n=Count("id")) if from_events else ():
            counts[row["value"]] = counts.get(row["value"], 0) + row["n"]
        distinct = len(counts)
        ranked = sorted(counts.items(), key=lambda vn: (-vn[1], vn[0] is None, vn[0] or ""))
        ranked = ranked[:limit]
    else:
        # One scan gives the top values and, as a window over the groups, how many there are.
        top = list(
            events.values("value")
            .annotate(n=Count("id"))
            .annotate(groups=Window(expression=Count("*")))
            .order_by("-n", "value")[:limit]
        )
        distinct = top[0]["groups"] if top else 0
        ranked = [(row["value"], row["n"]) for row in top]
        from_events = set(all_meters)
    wanted = [value for value, _ in ranked]
    condition = Q(value__in=[v for v in wanted if v is not None])
    if None in wanted:
        condition |= Q(value__isnull=True)
    quantities: dict[str | None, dict[int, Decimal]] = {}
    for value in wanted:
        for meter_id, partial in from_rollups.get(value, {}).items():
            quantities.setdefault(value, {})[meter_id] = charted[meter_id].quantity(partial)
    if wanted and from_events:
        usage = aggregations.measure_events(
            events.filter(condition), aggregations=charted, group_by=("value",)
        )
        for (value, meter_id), found in usage.items():
            quantities.setdefault(value, {})[meter_id] = found.quantity
    meter_ids = {pk for per_value in quantities.values() for pk in per_value}
    return Breakdown(
        property=prop,
        meters=sorted((all_meters[pk] for pk in meter_ids), key=lambda m: m.code),
        rows=[
            BreakdownRow(value=value, events=n, quantities=quantities.get(value, {}))
            for value, n in ranked
        ],
        distinct_values=distinct,
    )


def property_names(*, customer: Customer, period: BillingPeriod, sample: int = 200) -> list[str]:
    """Property names seen in the period's latest events, as suggestions for the breakdown.

    The latest `sample` events of each meter: one backward scan of the (customer, meter,
    timestamp) index per meter, where ordering all the period's events would sort them all.
    """
    events = _period_events(customer, period)
    names: set[str] = set()
    for meter_id in Meter.objects.order_by("pk").values_list("pk", flat=True):
        recent = (
            events.filter(meter_id=meter_id)
            .order_by("-timestamp")
            .values_list("properties", flat=True)[:sample]
        )
        names.update(
            key for properties in recent if isinstance(properties, dict) for key in properties
        )
    return sorted(name for name in names if is_property_name(name))[:50]


# --- Invoices, periods ---------------------------------------------------------------


def list_invoices(*, customer: Customer) -> QuerySet[Invoice]:
    """The customer's invoices, newest first (drafts included); lines are not needed here."""
    return (
        Invoice.objects.filter(customer=customer)
        .select_related("period")
        .order_by("-period__start", "-pk")
    )


def recent_periods(*, customer: Customer, limit: int = 24) -> list[BillingPeriod]:
    return list(BillingPeriod.objects.filter(customer=customer).order_by("-start")[:limit])


# --- Usage export ----------------------------------------------------------------------------

EXPORT_COLUMNS = ("event_id", "customer_id", "meter", "quantity", "timestamp", "properties")


def export_events(
    *, customer: Customer, start: datetime, end: datetime, chunk_size: int = 2000
) -> Iterator[tuple[str, str, Decimal, datetime, Any]]:
    """(event_id, meter code, quantity, timestamp, properties) of the events in [start, end),
    oldest first, fetched in chunks (a server-side cursor on PostgreSQL): constant memory."""
    return (
        UsageEvent.objects.filter(customer=customer, timestamp__gte=start, timestamp__lt=end)
        .order_by("timestamp", "pk")
        .values_list("event_id", "meter__code", "quantity", "timestamp", "properties")
        .iterator(chunk_size=chunk_size)
    )
