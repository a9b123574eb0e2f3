"""Closing billing periods: usage aggregated in SQL, a draft invoice whose lines each bill
one aggregate, exactly once per period.

A close runs in one transaction per period: the period row is locked (a second closer waits,
then finds it closed), the customer's usage lock is taken exclusively (no event of the customer
commits meanwhile), aggregates are written and their events stamped, the invoice and its lines
are written, and the period is marked closed. Invoice.period is unique, so even a bug in the
locking could not produce a second invoice. An exception anywhere rolls all of it back, and the
next run starts from scratch and produces the same invoice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q

from invoicing.models import BillingPeriod, Invoice, InvoiceLine, PricePlan
from invoicing.pricing import LineDraft, adjustment_line, plan_price_specs, usage_line
from invoicing.services import budgets, subscriptions
from invoicing.services.audit import record_audit
from metering import aggregation
from metering.models import Meter, UsageAggregate, UsageEvent

logger = logging.getLogger(__name__)


@dataclass
class CloseReport:
    closed: list[int] = field(default_factory=list)  # period ids
    failed: dict[int, str] = field(default_factory=dict)  # period id -> error
    finalized: list[int] = field(default_factory=list)  # invoice ids


def due_period_ids(*, now: datetime, limit: int | None = None) -> list[int]:
    """Periods past their end plus the grace period and not closed, oldest first."""
    cutoff = now - timedelta(seconds=settings.BILLING_GRACE_PERIOD)
    due = (
        BillingPeriod.objects.filter(end__lte=cutoff)
        .exclude(status=BillingPeriod.Status.CLOSED)
        .order_by("end", "pk")
        .values_list("pk", flat=True)
    )
    return list(due[:limit] if limit else due)


def close_due_periods(*, now: datetime) -> CloseReport:
    """Roll subscriptions forward, then close every due period; one failure stops no other."""
    subscriptions.roll_subscriptions(now=now)
    report = CloseReport()
    for period_id in due_period_ids(now=now):
        try:
            invoice = close_billing_period(period_id=period_id, now=now)
        except Exception as exc:  # one customer's failure must not stop the others
            logger.exception("closing period %s failed", period_id)
            report.failed[period_id] = f"{type(exc).__name__}: {exc}"
            continue
        if invoice is not None:
            report.closed.append(period_id)
    return report


def close_billing_period(*, period_id: int, now: datetime) -> Invoice | None:
    """Close one period and return its draft invoice; the existing invoice if already closed;
    None if it is not due yet or an earlier period of the customer is still to be closed."""
    with transaction.atomic():
        period = (
            BillingPeriod.objects.select_for_update()
            .select_related("customer", "plan")
            .get(pk=period_id)
        )
        if period.status == BillingPeriod.Status.CLOSED:
            return Invoice.objects.get(period=period)
        cutoff = now - timedelta(seconds=settings.BILLING_GRACE_PERIOD)
        if period.end > cutoff:
            return None
        earlier_open = (
            BillingPeriod.objects.filter(customer=period.customer, start__lt=period.start)
            .exclude(status=BillingPeriod.Status.CLOSED)
            .exists()
        )
        if earlier_open:
            return None  # periods close in order; the earlier one goes first
        aggregation.lock_customer_usage([period.customer_id], exclusive=True)
        lines = _bill_usage(period)
        invoice = _write_invoice(period=period, lines=lines, now=now)
        period.status = BillingPeriod.Status.CLOSED
        period.closed_at = now
        period.save(update_fields=["status", "closed_at"])
        usage_aggs = UsageAggregate.objects.filter(line__invoice=invoice)
        record_audit(
            action="period.closed",
            obj=period,
            customer_external_id=period.customer.external_id,
            data={
                "invoice_id": invoice.pk,
                "period_start": period.start,
                "period_end": period.end,
                "event_count": sum(a.event_count for a in usage_aggs),
                "quantities": {
                    f"{line.kind}:{line.meter.code if line.meter else '-'}": str(line.quantity)
                    for line in invoice.lines.select_related("meter")
                },
                "total_minor": invoice.total_minor,
            },
        )
        record_audit(
            action="invoice.created",
            obj=invoice,
            customer_external_id=period.customer.external_id,
            data={
                "period_id": period.pk,
                "status": invoice.status,
                "total_minor": invoice.total_minor,
            },
        )
    return invoice


def _bill_usage(period: BillingPeriod) -> list[LineDraft]:
    """Aggregate and stamp the period's events, and the late events of closed periods."""
    meters = {m.pk: m for m in Meter.objects.all()}
    specs = plan_price_specs(period.plan)
    lines: list[LineDraft] = []
    aggregates = aggregation.bill_usage_window(
        customer_id=period.customer_id,
        window_start=period.start,
        window_end=period.end,
        billed_through=period.end,
        kind=UsageAggregate.Kind.USAGE,
        always_meter_ids=specs.keys(),
    )
    for aggregate in sorted(aggregates, key=lambda a: meters[a.meter_id].code):
        line = usage_line(
            meter=meters[aggregate.meter_id],
            spec=specs.get(aggregate.meter_id),
            quantity=aggregate.cumulative_quantity,
        )
        line.aggregate_id = aggregate.pk
        lines.append(line)
    lines.extend(_cap_credit(period, lines, label="this period"))
    lines.extend(_bill_late_usage(period, meters))
    return lines


def _cap_credit(
    period: BillingPeriod, new_lines: list[LineDraft], *, label: str
) -> list[LineDraft]:
    """A cap credit line for `period` when what it bills would exceed an unacknowledged cap.

    What a period bills over all invoices is min(uncapped usage, cap). `new_lines` are this
    close's usage or adjustment lines for the period; what earlier invoices billed for it
    (usage, adjustments and credits) is counted, so late usage beyond the cap is offset too.
    """
    cap = budgets.cap_for_period(customer_id=period.customer_id, period_start=period.start)
    if cap is None:
        return []
    earlier = InvoiceLine.objects.filter(
        Q(invoice__period=period, source_period__isnull=True) | Q(source_period=period)
    )
    earlier_uncapped = sum(
        earlier.exclude(kind=InvoiceLine.Kind.CAP_CREDIT).values_list("amount_minor", flat=True)
    )
    earlier_net = sum(earlier.values_list("amount_minor", flat=True))
    new_amount = sum(line.amount_minor for line in new_lines)
    capped_total = min(earlier_uncapped + new_amount, cap)
    credit = capped_total - earlier_net - new_amount  # <= 0
    if credit >= 0:
        return []
    return [
        LineDraft(
            kind=InvoiceLine.Kind.CAP_CREDIT,
            meter=None,
            description=f"Budget cap credit ({label}): usage beyond the cap is not charged",
            quantity=Decimal(0),
            amount_minor=credit,
            pricing={"cap_minor": cap, "uncapped_minor": earlier_uncapped + new_amount},
            source_period_id=period.pk,
        )
    ]


def _bill_late_usage(period: BillingPeriod, meters: dict[int, Meter]) -> list[LineDraft]:
    """Adjustment lines for events of already-closed periods (and of time before the first
    period) that no aggregate has billed yet."""
    customer_id = period.customer_id
    earliest = aggregation.earliest_unbilled_before(customer_id=customer_id, before=period.start)
    if earliest is None:
        return []
    unbilled = UsageEvent.objects.filter(
        customer_id=customer_id,
        aggregate__isnull=True,
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
        windows.insert(0, (earliest, first_start, None, period.plan))

    lines: list[LineDraft] = []
    for start, end, source, plan in windows:
        window_lines: list[LineDraft] = []
        specs = plan_price_specs(plan)
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
        ):
            line = adjustment_line(
                meter=meters[aggregate.meter_id],
                spec=specs.get(aggregate.meter_id),
                previous=aggregate.cumulative_quantity - aggregate.quantity,
                cumulative=aggregate.cumulative_quantity,
                label=label,
            )
            line.aggregate_id = aggregate.pk
            line.source_period_id = source.pk if source is not None else None
            window_lines.append(line)
        lines.extend(window_lines)
        if source is not None:
            lines.extend(_cap_credit(source, window_lines, label=label))
    return lines


def _write_invoice(*, period: BillingPeriod, lines: list[LineDraft], now: datetime) -> Invoice:
    invoice = Invoice.objects.create(
        customer=period.customer,
        period=period,
        currency=period.plan.currency,
        total_minor=sum(line.amount_minor for line in lines),
        finalize_after=now + timedelta(seconds=settings.BILLING_REVIEW_PERIOD),
    )
    InvoiceLine.objects.bulk_create(
        InvoiceLine(
            invoice=invoice,
            position=position,
            kind=line.kind,
            aggregate_id=line.aggregate_id,
            source_period_id=line.source_period_id,
            meter=line.meter,
            description=line.description,
            quantity=line.quantity,
            amount_minor=line.amount_minor,
            pricing=line.pricing,
        )
        for position, line in enumerate(lines, start=1)
    )
    return invoice
