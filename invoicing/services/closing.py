"""Closing billing periods: usage aggregated in SQL, a draft invoice whose lines each bill
one aggregate, exactly once per period.

Periods close in batches, each batch one transaction: its period rows are locked (`SKIP
LOCKED`, so concurrent closers take different batches and never wait on each other), the
customers' usage locks are taken exclusively (no event of theirs commits meanwhile), the
events of each window are aggregated per (customer, meter) with a constant number of queries,
and the aggregates (each recording the events it billed as an id range, see
metering/aggregation.py), invoices, lines and audit entries are written with one INSERT each
(`invoicing.bulk.insert_rows`: binary column arrays, no model instance per row), the period
states with one UPDATE. Only the rating runs per line, through the one engine. Invoice.period
is unique, so even a locking bug could not produce a second invoice. An exception rolls the
whole batch back; its periods are then closed one by one, so a bad period fails alone and the
others still close. A re-run starts from scratch and produces the same invoices.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q

from audit import services as audit
from audit.models import AuditEntry
from invoicing import hooks
from invoicing.bulk import insert_rows
from invoicing.models import BillingPeriod, Invoice, InvoiceLine, PricePlan, UnpricedResolution
from invoicing.pricing import (
    LineDraft,
    MeterPrice,
    PricingRecord,
    adjustment_line,
    plan_price_specs,
    price_dimensions,
    usage_line,
)
from invoicing.services import subscriptions
from metering import aggregation
from metering.dimensions import describe_values, dimension_key
from metering.models import Meter, UsageAggregate, UsageEvent

logger = logging.getLogger(__name__)

BATCH_SIZE = 500


@dataclass
class CloseReport:
    closed: list[int] = field(default_factory=list)  # period ids
    failed: dict[int, str] = field(default_factory=dict)  # period id -> error


def _cutoff(now: datetime) -> datetime:
    return now - timedelta(seconds=settings.BILLING_GRACE_PERIOD)


def due_period_ids(*, now: datetime, limit: int | None = None) -> list[int]:
    """Periods past their end plus the grace period and not closed, oldest first."""
    due = (
        BillingPeriod.objects.filter(end__lte=_cutoff(now))
        .exclude(status=BillingPeriod.Status.CLOSED)
        .order_by("end", "pk")
        .values_list("pk", flat=True)
    )
    return list(due[:limit] if limit else due)


@dataclass
class _Run:
    """What one close run reads once: meters and the price specs of each plan version."""

    meters: dict[int, Meter]
    specs: dict[int, dict[int, MeterPrice]] = field(default_factory=dict)

    def specs_for(self, plan: PricePlan) -> dict[int, MeterPrice]:
        if plan.pk not in self.specs:
            self.specs[plan.pk] = plan_price_specs(plan)
        return self.specs[plan.pk]

    def dimensions_for(self, plan: PricePlan) -> dict[int, tuple[str, ...]]:
        """Meter id -> dimension names of the plan's rate cards (what usage groups by)."""
        return price_dimensions(self.specs_for(plan))


def close_due_periods(*, now: datetime, batch_size: int = BATCH_SIZE) -> CloseReport:
    """Roll subscriptions forward, then close every due period, in batches, oldest first.

    A customer's periods close in order: each pass closes the earliest open period of each
    customer, and passes repeat until nothing more closes (a catch-up after an outage).
    One period's failure stops no other.
    """
    subscriptions.roll_subscriptions(now=now)
    report = CloseReport()
    run = _Run(meters={m.pk: m for m in Meter.objects.all()})
    while True:
        closed_this_pass = 0
        pending = [pk for pk in due_period_ids(now=now) if pk not in report.failed]
        for offset in range(0, len(pending), batch_size):
            batch = pending[offset : offset + batch_size]
            try:
                closed = _close_batch(batch, now=now, run=run)
            except Exception:
                logger.exception(
                    "closing a batch of %s periods failed; closing one by one", len(batch)
                )
                closed = {}
                for period_id in batch:
                    try:
                        closed.update(_close_batch([period_id], now=now, run=run))
                    except Exception as exc:  # one customer's failure must not stop the others
                        logger.exception("closing period %s failed", period_id)
                        report.failed[period_id] = f"{type(exc).__name__}: {exc}"
            report.closed.extend(closed)
            closed_this_pass += len(closed)
        if closed_this_pass == 0:
            return report


def close_billing_period(*, period_id: int, now: datetime) -> Invoice | None:
    """Close one period and return its draft invoice; the existing invoice if already closed;
    None if it is not due yet, an earlier period of the customer is still open, or another
    closer holds it right now."""
    existing = Invoice.objects.filter(period_id=period_id).first()
    if existing is not None:
        return existing
    run = _Run(meters={m.pk: m for m in Meter.objects.all()})
    invoice_id = _close_batch([period_id], now=now, run=run).get(period_id)
    return None if invoice_id is None else Invoice.objects.get(pk=invoice_id)


# What closing reads of a period, its customer and plan (the rest stays in the database).
_PERIOD_FIELDS = (
    "customer_id",
    "plan_id",
    "start",
    "end",
    "status",
    "customer__external_id",
    "plan__currency",
)


def _close_batch(period_ids: list[int], *, now: datetime, run: _Run) -> dict[int, int]:
    """Close the given periods that are due, open and first in line; returns their invoice
    ids by period id."""
    with transaction.atomic():
        locked = BillingPeriod.objects.select_for_update(skip_locked=True)
        if connection.vendor == "postgresql":
            locked = BillingPeriod.objects.select_for_update(skip_locked=True, of=("self",))
        # First in line: no earlier period of the customer is still open.
        earlier_open = BillingPeriod.objects.filter(
            customer_id=OuterRef("customer_id"), start__lt=OuterRef("start")
        ).exclude(status=BillingPeriod.Status.CLOSED)
        periods = list(
            locked.select_related("customer", "plan")
            .only(*_PERIOD_FIELDS)
            .filter(pk__in=period_ids, end__lte=_cutoff(now))
            .exclude(status=BillingPeriod.Status.CLOSED)
            .exclude(Exists(earlier_open))
            .order_by("pk")
        )
        if not periods:
            return {}
        customer_ids = sorted(p.customer_id for p in periods)
        aggregation.lock_customer_usage(customer_ids, exclusive=True)
        # Under the exclusive locks: these customers' events up to `through` are committed,
        # and `after` is each one's watermark at its previous close.
        through = aggregation.usage_watermark()
        after = aggregation.previous_watermarks(customer_ids)

        caps = hooks.period_caps(periods)  # the budgets' rule (budgets.selectors)
        late = aggregation.late_customers(
            customer_ids=customer_ids,
            before={p.customer_id: p.start for p in periods},
            after=after,
            through=through,
        )
        lines_by_period: dict[int, list[LineDraft]] = {}
        event_counts: dict[int, int] = {}
        windows: dict[tuple[datetime, datetime], list[BillingPeriod]] = defaultdict(list)
        for period in periods:
            windows[(period.start, period.end)].append(period)
        for (start, end), group in windows.items():
            _bill_window(start, end, group, run, through, lines_by_period, event_counts)
        billed_unpriced = _billed_unpriced_lines(customer_ids)
        for period in periods:
            lines = lines_by_period[period.pk]
            lines.extend(billed_unpriced.get(period.customer_id, []))
            lines.extend(_cap_credit_for_new_period(period, lines, caps.get(period.pk)))
            if period.customer_id in late:
                late_lines = _bill_late_usage(
                    period, run, after=after.get(period.customer_id, 0), through=through
                )
                lines.extend(late_lines)
        invoices = _write_invoices(periods=periods, lines_by_period=lines_by_period, now=now)
        BillingPeriod.objects.filter(pk__in=[p.pk for p in periods]).update(
            status=BillingPeriod.Status.CLOSED, closed_at=now
        )
        insert_rows(AuditEntry, _audit_columns(periods, invoices, lines_by_period, event_counts))
    return invoices


def _bill_window(
    start: datetime,
    end: datetime,
    periods: list[BillingPeriod],
    run: _Run,
    through: int,
    lines_by_period: dict[int, list[LineDraft]],
    event_counts: dict[int, int],
) -> None:
    """Aggregate the events of periods sharing a window (never billed before, so all of
    their events up to the watermark) and write one aggregate per customer and group: a
    meter, or for a rate card's meter each combination of its dimensions' values."""
    # Periods whose plans group usage alike are aggregated together (one set of queries).
    by_dimensions: dict[tuple[tuple[int, tuple[str, ...]], ...], list[BillingPeriod]] = defaultdict(
        list
    )
    for period in periods:
        by_dimensions[tuple(sorted(run.dimensions_for(period.plan).items()))].append(period)
    usage: dict[tuple[int, int, tuple[str | None, ...]], aggregation.WindowUsage] = {}
    for signature, group in by_dimensions.items():
        usage.update(
            aggregation.summarize_customers(
                customer_ids=[p.customer_id for p in group],
                start=start,
                end=end,
                meters=run.meters,
                through=through,
                dimensions=dict(signature),
            )
        )
    used: dict[int, set[tuple[int, tuple[str | None, ...]]]] = defaultdict(set)
    for customer_id, meter_id, values in usage:
        used[customer_id].add((meter_id, values))
    # One aggregate per customer and group with usage or an ordinary price, in meter code
    # and then value order.
    Row = tuple[BillingPeriod, int, tuple[str | None, ...], aggregation.WindowUsage | None]
    rows: list[Row] = []
    for period in periods:
        specs = run.specs_for(period.plan)
        dimensions = run.dimensions_for(period.plan)
        groups = used[period.customer_id] | {(pk, ()) for pk in specs if pk not in dimensions}
        for meter_id, values in sorted(
            groups, key=lambda g: (run.meters[g[0]].code, [(v is None, v or "") for v in g[1]])
        ):
            found = usage.get((period.customer_id, meter_id, values))
            rows.append((period, meter_id, values, found))
    quantities = [found.quantity if found else Decimal(0) for *_, found in rows]
    aggregate_ids = insert_rows(
        UsageAggregate,
        {
            "customer_id": [period.customer_id for period, *_ in rows],
            "meter_id": [meter_id for _, meter_id, *_ in rows],
            "dimensions": [
                dict(zip(run.dimensions_for(period.plan)[meter_id], values, strict=True))
                if values
                else None
                for period, meter_id, values, _ in rows
            ],
            "dimension_key": [dimension_key(values) for _, _, values, _ in rows],
            "kind": [UsageAggregate.Kind.USAGE.value] * len(rows),
            "window_start": [start] * len(rows),
            "window_end": [end] * len(rows),
            "billed_through": [end] * len(rows),
            "event_pk_after": [0] * len(rows),
            "event_pk_through": [through] * len(rows),
            "quantity": quantities,
            "cumulative_quantity": quantities,
            "event_count": [found.new_count if found else 0 for *_, found in rows],
            "first_event_at": [found.new_first if found else None for *_, found in rows],
            "last_event_at": [found.new_last if found else None for *_, found in rows],
        },
        match_on=("customer_id", "meter_id", "dimension_key"),
    )
    for period in periods:
        lines_by_period[period.pk] = []
        event_counts[period.pk] = 0
    for (period, meter_id, values, found), quantity, aggregate_id in zip(
        rows, quantities, aggregate_ids, strict=True
    ):
        line = usage_line(
            meter=run.meters[meter_id],
            spec=run.specs_for(period.plan).get(meter_id),
            quantity=quantity,
            values=values,
        )
        line.aggregate_id = aggregate_id
        lines_by_period[period.pk].append(line)
        event_counts[period.pk] += found.new_count if found else 0


def _cap_credit_for_new_period(
    period: BillingPeriod, lines: list[LineDraft], cap: hooks.PeriodCap | None
) -> list[LineDraft]:
    """A closing period has no earlier lines: it bills min(total, the cap's limit)."""
    total = sum(line.amount_minor for line in lines)
    if cap is None or total <= cap.limit_minor:
        return []
    return [
        _cap_credit_line(
            period, cap=cap, uncapped=total, credit=cap.limit_minor - total, label="this period"
        )
    ]


def _cap_credit_line(
    period: BillingPeriod, *, cap: hooks.PeriodCap, uncapped: int, credit: int, label: str
) -> LineDraft:
    return LineDraft(
        kind=InvoiceLine.Kind.CAP_CREDIT,
        meter=None,
        description=f"Budget cap credit ({label}): usage beyond the cap is not charged",
        quantity=Decimal(0),
        amount_minor=credit,
        pricing=PricingRecord.cap_credit(
            cap_minor=cap.cap_minor,
            uncapped_minor=uncapped,
            acknowledged_minor=cap.acknowledged_minor if cap.limit_minor > cap.cap_minor else None,
        ),
        source_period_id=period.pk,
    )


def _cap_credit_for_late_usage(
    source: BillingPeriod, new_lines: list[LineDraft], *, label: str
) -> list[LineDraft]:
    """Late usage of a capped period: offset what would take its total over the cap's limit.

    What a period bills over all invoices is min(uncapped usage, the limit); what earlier
    invoices billed for it (usage, adjustments and credits) is counted.
    """
    cap = hooks.period_caps([source])[source.pk]
    if cap is None:
        return []
    earlier = InvoiceLine.objects.filter(
        Q(invoice__period=source, source_period__isnull=True) | Q(source_period=source)
    )
    earlier_uncapped = sum(
        earlier.exclude(kind=InvoiceLine.Kind.CAP_CREDIT).values_list("amount_minor", flat=True)
    )
    earlier_net = sum(earlier.values_list("amount_minor", flat=True))
    new_amount = sum(line.amount_minor for line in new_lines)
    uncapped = earlier_uncapped + new_amount
    credit = min(uncapped, cap.limit_minor) - earlier_net - new_amount  # <= 0
    if credit >= 0:
        return []
    return [_cap_credit_line(source, cap=cap, uncapped=uncapped, credit=credit, label=label)]


# The one window for usage from before a customer's first period, so that repeated late
# arrivals there chain their cumulative quantities like any other window's.
BEFORE_FIRST_PERIOD = datetime(1970, 1, 1, tzinfo=UTC)


def _bill_late_usage(
    period: BillingPeriod, run: _Run, *, after: int, through: int
) -> list[LineDraft]:
    """Adjustment lines for events of already-closed periods (and of time before the first
    period) that arrived after the customer's previous close (id in (after, through]); the
    rare path, one customer at a time."""
    customer_id = period.customer_id
    earliest = aggregation.earliest_unbilled_before(
        customer_id=customer_id, before=period.start, after=after, through=through
    )
    if earliest is None:
        return []
    unbilled = UsageEvent.objects.filter(
        customer_id=customer_id,
        pk__gt=after,
        pk__lte=through,
        timestamp__gte=OuterRef("start"),
        timestamp__lt=OuterRef("end"),
    )
    windows: list[tuple[datetime, datetime, BillingPeriod | None, PricePlan]] = [
        (p.start, p.end, p, p.plan)
        for p in BillingPeriod.objects.filter(
            customer_id=customer_id, status=BillingPeriod.Status.CLOSED, end__gt=earliest
        )
        .filter(Exists(unbilled))
        .select_related("plan")
        .order_by("start")
    ]
    first_start = (
        BillingPeriod.objects.filter(customer_id=customer_id)
        .order_by("start")
        .values_list("start", flat=True)
        .first()
    )
    if first_start is not None and earliest < first_start:
        # Usage from before the subscription's first period: billed now, at this period's plan.
        windows.insert(0, (BEFORE_FIRST_PERIOD, first_start, None, period.plan))

    lines: list[LineDraft] = []
    for start, end, source, plan in windows:
        window_lines: list[LineDraft] = []
        specs = run.specs_for(plan)
        label = (
            f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"
            if source is not None
            else f"before {end:%Y-%m-%d %H:%M} UTC"
        )
        for aggregate in aggregation.bill_usage_window(
            customer_id=customer_id,
            window_start=start,
            window_end=end,
            billed_through=period.end,
            kind=UsageAggregate.Kind.ADJUSTMENT,
            after=after,
            through=through,
            dimensions=run.dimensions_for(plan),
        ):
            line = adjustment_line(
                meter=run.meters[aggregate.meter_id],
                spec=specs.get(aggregate.meter_id),
                previous=aggregate.cumulative_quantity - aggregate.quantity,
                cumulative=aggregate.cumulative_quantity,
                label=label,
                values=tuple((aggregate.dimensions or {}).values()),
            )
            line.aggregate_id = aggregate.pk
            line.source_period_id = source.pk if source is not None else None
            window_lines.append(line)
        lines.extend(window_lines)
        if source is not None:
            lines.extend(_cap_credit_for_late_usage(source, window_lines, label=label))
    return lines


def _billed_unpriced_lines(customer_ids: list[int]) -> dict[int, list[LineDraft]]:
    """Adjustment lines for the unpriced usage finance chose to bill (UnpricedResolution
    `bill`) that no invoice carries yet, by customer: this close's invoice is their next."""
    pending = (
        UnpricedResolution.objects.filter(
            action=UnpricedResolution.Action.BILL,
            billed_line__isnull=True,
            line__invoice__customer_id__in=customer_ids,
        )
        .select_related("line__meter", "line__invoice__period")
        .order_by("pk")
    )
    found: dict[int, list[LineDraft]] = defaultdict(list)
    for resolution in pending:
        line = resolution.line
        record = PricingRecord.from_json(resolution.pricing)
        values = describe_values(
            [name for name, _ in record.dimensions], tuple(v for _, v in record.dimensions)
        )
        period = line.invoice.period
        found[line.invoice.customer_id].append(
            LineDraft(
                kind=InvoiceLine.Kind.ADJUSTMENT,
                meter=line.meter,
                description=(
                    f"{line.meter.name if line.meter else 'Usage'} — {values}: unpriced usage "
                    f"of {period.start:%Y-%m-%d %H:%M} to {period.end:%Y-%m-%d %H:%M} UTC, billed"
                ),
                quantity=line.quantity,
                amount_minor=resolution.amount_minor,
                pricing=record,
                source_period_id=line.source_period_id or period.pk,
                resolution_id=resolution.pk,
            )
        )
    return found


def _write_invoices(
    *, periods: list[BillingPeriod], lines_by_period: dict[int, list[LineDraft]], now: datetime
) -> dict[int, int]:
    """One draft invoice per period and its lines, in two INSERTs; returns the invoice ids
    by period id."""
    finalize_after = now + timedelta(seconds=settings.BILLING_REVIEW_PERIOD)
    invoice_ids = insert_rows(
        Invoice,
        {
            "customer_id": [period.customer_id for period in periods],
            "period_id": [period.pk for period in periods],
            "status": [Invoice.Status.DRAFT.value] * len(periods),
            "currency": [period.plan.currency for period in periods],
            "total_minor": [_total(lines_by_period[period.pk]) for period in periods],
            "finalize_after": [finalize_after] * len(periods),
        },
        match_on=("period_id",),
    )
    by_period = {period.pk: pk for period, pk in zip(periods, invoice_ids, strict=True)}
    lines = [
        (by_period[period.pk], position, line)
        for period in periods
        for position, line in enumerate(lines_by_period[period.pk], start=1)
    ]
    line_ids = insert_rows(
        InvoiceLine,
        {
            "invoice_id": [invoice_id for invoice_id, _, _ in lines],
            "position": [position for _, position, _ in lines],
            "kind": [str(line.kind) for _, _, line in lines],
            "aggregate_id": [line.aggregate_id for _, _, line in lines],
            "source_period_id": [line.source_period_id for _, _, line in lines],
            "meter_id": [line.meter.pk if line.meter else None for _, _, line in lines],
            "description": [line.description for _, _, line in lines],
            "quantity": [line.quantity for _, _, line in lines],
            "amount_minor": [line.amount_minor for _, _, line in lines],
            "pricing": [line.pricing.to_json() for _, _, line in lines],
        },
    )
    for (_, _, line), line_id in zip(lines, line_ids, strict=True):
        if line.resolution_id is not None:  # billed unpriced usage: now on an invoice
            UnpricedResolution.objects.filter(pk=line.resolution_id).update(billed_line_id=line_id)
    return by_period


def _total(lines: list[LineDraft]) -> int:
    """An invoice's total: the sum of its lines, in minor units."""
    return sum(line.amount_minor for line in lines)


def _audit_columns(
    periods: list[BillingPeriod],
    invoices: dict[int, int],
    lines_by_period: dict[int, list[LineDraft]],
    event_counts: dict[int, int],
) -> dict[str, list[Any]]:
    """The audit entries of a batch's closes, column-wise: per period `period.closed` and
    `invoice.created` (datetimes encoded once each, as the audit log writes them)."""
    as_json = DjangoJSONEncoder().default  # how the audit log writes a datetime
    instants: dict[datetime, str] = {}
    rows: list[audit.SystemEntry] = []
    for period in periods:
        lines = lines_by_period[period.pk]
        external_id = period.customer.external_id
        total = _total(lines)
        for instant in (period.start, period.end):
            if instant not in instants:
                instants[instant] = as_json(instant)
        rows.append(
            (
                "period.closed",
                BillingPeriod,
                period.pk,
                external_id,
                {
                    "invoice_id": invoices[period.pk],
                    "period_start": instants[period.start],
                    "period_end": instants[period.end],
                    "event_count": event_counts[period.pk],
                    "quantities": {
                        f"{line.kind}:{line.meter.code if line.meter else '-'}": str(line.quantity)
                        for line in lines
                        if line.kind == InvoiceLine.Kind.USAGE
                    },
                    "total_minor": total,
                },
            )
        )
        rows.append(
            (
                "invoice.created",
                Invoice,
                invoices[period.pk],
                external_id,
                {
                    "period_id": period.pk,
                    "status": Invoice.Status.DRAFT.value,
                    "total_minor": total,
                    "lines": len(lines),
                },
            )
        )
    return audit.system_entry_columns(rows)
