"""Reconciliation: unique events == aggregates == invoice lines (+ adjustments) == invoices.

Each check recomputes a figure from its source and compares it with what was stored; every
difference is reported as one line of text. An empty report means the books agree.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC
from decimal import Decimal
from typing import Any

from django.db.models import Count, Max, OuterRef, Subquery, Sum
from django.db.models.functions import Coalesce, TruncHour

from invoicing.backends import get_backend
from invoicing.models import (
    BillingPeriod,
    CreditNote,
    CreditNoteLine,
    Invoice,
    InvoiceLine,
    UnpricedResolution,
)
from invoicing.pricing import plan_price_specs, price_dimensions, rate_group
from metering import aggregation, aggregations
from metering.models import Meter, UsageAggregate, UsageEvent, UsageRollup


def reconcile() -> list[str]:
    """Return every difference found; [] when events, aggregates, lines and invoices agree."""
    problems: list[str] = []
    problems += _aggregates_match_events()
    problems += _lines_match_aggregates()
    problems += _invoices_match_lines()
    problems += _periods_have_one_invoice()
    problems += _credit_notes_match_their_lines()
    problems += _no_event_left_behind()
    problems += _unpriced_usage_resolved()
    problems += _rollups_match_events()
    problems += get_backend().reconcile()  # what the billing backend holds (Stripe)
    return problems


def _credit_notes_match_their_lines() -> list[str]:
    """A credit note's total is the sum of its lines, in its invoice's currency; no line is
    credited beyond what it billed, and no invoice beyond its total."""
    problems: list[str] = []
    notes = CreditNote.objects.select_related("invoice").annotate(
        lines_total=Coalesce(Sum("lines__amount_minor"), 0)
    )
    per_invoice: dict[int, int] = defaultdict(int)
    for note in notes:
        if note.lines_total != note.total_minor:
            problems.append(
                f"credit note {note.number}: total {note.total_minor} != its lines "
                f"{note.lines_total}"
            )
        if note.currency != note.invoice.currency:
            problems.append(
                f"credit note {note.number} is in {note.currency}, its invoice in "
                f"{note.invoice.currency}"
            )
        per_invoice[note.invoice_id] += note.total_minor
    for invoice in Invoice.objects.filter(pk__in=per_invoice):
        if per_invoice[invoice.pk] > invoice.total_minor:
            problems.append(
                f"invoice {invoice}: credit notes {per_invoice[invoice.pk]} exceed its total "
                f"{invoice.total_minor}"
            )
    credited = (
        CreditNoteLine.objects.values("invoice_line_id", "invoice_line__amount_minor")
        .annotate(total=Sum("amount_minor"))
        .order_by("invoice_line_id")
    )
    for row in credited:
        if row["total"] > max(row["invoice_line__amount_minor"], 0):
            problems.append(
                f"invoice line {row['invoice_line_id']}: credited {row['total']} of "
                f"{row['invoice_line__amount_minor']}"
            )
    return problems


def _rollups_match_events() -> list[str]:
    """The hourly rollups (what "how much so far?" reads) must be the partials of their
    events, every column of them (see metering.aggregations)."""
    problems: list[str] = []
    events = UsageEvent.objects.annotate(hour=TruncHour("timestamp", tzinfo=UTC))
    meter_ids = list(Meter.objects.values_list("pk", flat=True))
    from_events = {
        key: _rollup_figures(partial)
        for key, partial in aggregations.summarize_events(
            events, group_by=("customer_id", "hour"), latest_of=meter_ids
        ).items()
    }
    # A (customer, hour, meter) may have one rollup row per group of dimension values
    # (UsageRollup): their merge is what the hour's events must give.
    rollups = {
        key: _rollup_figures(partial)
        for key, partial in aggregations.summarize_rollups(
            UsageRollup.objects.all(), group_by=("customer_id", "hour"), latest_of=meter_ids
        ).items()
    }
    for key in sorted(set(from_events) | set(rollups)):
        if from_events.get(key) != rollups.get(key):
            customer_id, hour, meter_id = key
            problems.append(
                f"rollup of customer {customer_id} meter {meter_id} hour {hour:%Y-%m-%d %H}:00: "
                f"(quantity, events, max, latest) {rollups.get(key)} != "
                f"from events {from_events.get(key)}"
            )
    return problems


def _rollup_figures(partial: aggregations.Partial) -> tuple[Any, ...]:
    latest = partial.latest
    return (
        partial.total,
        partial.count,
        partial.top,
        (latest.at, latest.pk, latest.quantity) if latest is not None else None,
    )


def _aggregates_match_events() -> list[str]:
    """Each aggregate's event count and cumulative quantity, recomputed from its events."""
    problems: list[str] = []
    counted = (
        UsageEvent.objects.filter(
            customer_id=OuterRef("customer_id"),
            meter_id=OuterRef("meter_id"),
            timestamp__gte=OuterRef("window_start"),
            timestamp__lt=OuterRef("window_end"),
            pk__gt=OuterRef("event_pk_after"),
            pk__lte=OuterRef("event_pk_through"),
        )
        .values("meter_id")
        .annotate(n=Count("id"))
        .values("n")
    )
    windows: dict[tuple[int, int, str, object], list[UsageAggregate]] = defaultdict(list)
    for agg in UsageAggregate.objects.annotate(found=Coalesce(Subquery(counted), 0)).order_by(
        "billed_through"
    ):
        # A rate card's group: its own events only (the subquery counts the meter's).
        found = aggregation.events_of_aggregate(agg).count() if agg.dimensions else agg.found
        if found != agg.event_count:
            problems.append(
                f"aggregate {agg.pk}: records {agg.event_count} events, its id range holds {found}"
            )
        windows[(agg.customer_id, agg.meter_id, agg.dimension_key, agg.window_start)].append(agg)
    meters = {m.pk: m for m in Meter.objects.all()}
    for (customer_id, meter_id, _, _), chain in windows.items():
        total = sum((a.quantity for a in chain), Decimal(0))
        last = chain[-1]
        if total != last.cumulative_quantity:
            problems.append(
                f"aggregates of customer {customer_id} meter {meters[meter_id].code} window "
                f"{last.window_start:%Y-%m-%d %H:%M}: increments sum to {total}, "
                f"cumulative is {last.cumulative_quantity}"
            )
        names = list(last.dimensions or {})
        recomputed = aggregation.summarize_window_groups(
            customer_id=customer_id,
            start=last.window_start,
            end=last.window_end,
            meters={meter_id: meters[meter_id]},
            dimensions={meter_id: names} if names else None,
            through=last.event_pk_through,
        ).get((meter_id, tuple((last.dimensions or {}).values())))
        quantity = recomputed.quantity if recomputed else Decimal(0)
        if quantity != last.cumulative_quantity:
            problems.append(
                f"aggregate {last.pk} ({meters[meter_id].code}): billed {last.cumulative_quantity},"
                f" its events sum to {quantity}"
            )
    return problems


def _lines_match_aggregates() -> list[str]:
    problems: list[str] = []
    specs_by_plan: dict[int, dict] = {}
    lines = InvoiceLine.objects.select_related(
        "aggregate", "invoice__period__plan", "source_period__plan", "meter", "billed_resolution"
    ).exclude(kind=InvoiceLine.Kind.CAP_CREDIT)
    for line in lines:
        agg = line.aggregate
        resolution = getattr(line, "billed_resolution", None)
        if agg is None and resolution is not None:
            # Billed unpriced usage: the amount finance's action rated (UnpricedResolution).
            if line.amount_minor != resolution.amount_minor:
                problems.append(
                    f"line {line.pk}: bills unpriced usage at {line.amount_minor}, "
                    f"finance rated it at {resolution.amount_minor}"
                )
            continue
        if agg is None:
            problems.append(f"line {line.pk} ({line.kind}) bills no aggregate")
            continue
        expected_quantity = agg.cumulative_quantity if line.kind == "usage" else agg.quantity
        if line.quantity != expected_quantity:
            problems.append(
                f"line {line.pk}: quantity {line.quantity} != aggregate {agg.pk}'s "
                f"{expected_quantity}"
            )
        plan = (line.source_period or line.invoice.period).plan
        if line.kind != "usage" and line.source_period is None:
            plan = line.invoice.period.plan
        if plan.pk not in specs_by_plan:  # read each plan's prices once, not once per line
            specs_by_plan[plan.pk] = plan_price_specs(plan)
        specs = specs_by_plan[plan.pk]
        price = specs.get(agg.meter_id)
        values = tuple((agg.dimensions or {}).values())
        dimensioned = agg.meter_id in price_dimensions(specs)
        if dimensioned != bool(agg.dimensions):
            problems.append(
                f"aggregate {agg.pk}: grouped by {agg.dimensions}, its price's dimensions are "
                f"{price_dimensions(specs).get(agg.meter_id)}"
            )
        previous = agg.cumulative_quantity - agg.quantity
        expected = rate_group(price, values, agg.cumulative_quantity)
        if line.kind != "usage":
            expected -= rate_group(price, values, previous)
        if line.amount_minor != expected:
            problems.append(
                f"line {line.pk} ({line.meter.code if line.meter else '-'}): amount "
                f"{line.amount_minor} != {expected} rated from its aggregate"
            )
    return problems


def _unpriced_usage_resolved() -> list[str]:
    """Unpriced usage (DESIGN 4a) that finance has neither billed nor waived is a
    difference: never silently free."""
    open_lines = (
        InvoiceLine.objects.filter(kind=InvoiceLine.Kind.UNPRICED, quantity__gt=0)
        .exclude(pk__in=UnpricedResolution.objects.values("line_id"))
        .select_related("meter", "invoice")
        .order_by("pk")
    )
    return [
        f"line {line.pk} of invoice {line.invoice.number or line.invoice_id}: unpriced usage "
        f"{line.description} ({line.quantity}) neither billed nor waived"
        for line in open_lines
    ]


def _invoices_match_lines() -> list[str]:
    problems: list[str] = []
    sums = dict(
        InvoiceLine.objects.values("invoice_id")
        .annotate(total=Sum("amount_minor"))
        .values_list("invoice_id", "total")
    )
    for invoice_id, number, total in Invoice.objects.values_list("pk", "number", "total_minor"):
        if sums.get(invoice_id, 0) != total:
            problems.append(
                f"invoice {number or invoice_id}: total {total} != sum of lines "
                f"{sums.get(invoice_id, 0)}"
            )
    return problems


def _periods_have_one_invoice() -> list[str]:
    missing = BillingPeriod.objects.filter(
        status=BillingPeriod.Status.CLOSED, invoice__isnull=True
    ).values_list("pk", flat=True)
    return [f"closed period {pk} has no invoice" for pk in missing]


def _no_event_left_behind() -> list[str]:
    """Every event before a customer's last closed period's end that arrived before that
    close (id up to its watermark) is billed by exactly one aggregate: the counts agree."""
    problems: list[str] = []
    last_close = {
        row["customer_id"]: row
        for row in BillingPeriod.objects.filter(status=BillingPeriod.Status.CLOSED)
        .values("customer_id")
        .annotate(end=Max("end"))
    }
    watermarks = dict(
        UsageAggregate.objects.values("customer_id")
        .annotate(through=Max("event_pk_through"))
        .values_list("customer_id", "through")
    )
    billed = dict(
        UsageAggregate.objects.values("customer_id")
        .annotate(n=Sum("event_count"))
        .values_list("customer_id", "n")
    )
    for customer_id, row in last_close.items():
        expected = UsageEvent.objects.filter(
            customer_id=customer_id,
            timestamp__lt=row["end"],
            pk__lte=watermarks.get(customer_id, 0),
        ).count()
        if expected != (billed.get(customer_id) or 0):
            problems.append(
                f"customer {customer_id}: {expected} events up to its last close, "
                f"{billed.get(customer_id) or 0} billed"
            )
    return problems
