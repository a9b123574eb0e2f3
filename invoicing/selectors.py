"""Reads of the invoicing app: current usage rated like the invoice, invoices, traceability."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import QuerySet

from invoicing.models import BillingPeriod, Invoice, InvoiceLine, PricePlan, Subscription
from invoicing.pricing import LineDraft, MeterPrice, plan_price_specs, price_dimensions, usage_line
from invoicing.services.subscriptions import scheduled_period
from metering import aggregation
from metering.models import Customer, Meter, UsageEvent


@dataclass
class UsagePreview:
    """The current period so far, with lines drafted exactly as the close will draft them."""

    period: BillingPeriod
    lines: list[LineDraft]
    specs: dict[int, MeterPrice]  # meter id -> the plan's price, as the lines were rated
    meters: dict[int, Meter]  # every meter by id, as read for the lines

    @property
    def customer(self) -> Customer:
        return self.period.customer  # loaded only if asked for: the reads do not need it

    @property
    def total_minor(self) -> int:
        return sum(line.amount_minor for line in self.lines)

    @property
    def currency(self) -> str:
        return self.period.plan.currency


def plan_in_use(*, plan: PricePlan | None) -> bool:
    """Whether a billing period was opened with this plan version: it is then immutable (its
    prices and tiers too), enforced by services.plans.ensure_plan_version_editable and by the
    database (migration invoicing 0009)."""
    if plan is None or plan.pk is None:
        return False
    return BillingPeriod.objects.filter(plan=plan).exists()


# A plan version is immutable once a billing period uses it (see plan_in_use; the plans API
# creates a new version instead), so the prices of a period's plan can be kept in the process;
# the expiry only bounds the damage should the database ever be changed by hand.
PERIOD_PRICES_SECONDS = 300
_period_prices: dict[int, tuple[float, dict[int, MeterPrice]]] = {}


def period_price_specs(*, period: BillingPeriod) -> dict[int, MeterPrice]:
    """Meter id -> price (PriceSpec or RateCard) of the plan version a period was opened
    with (no query when this process read them in the last PERIOD_PRICES_SECONDS)."""
    now = time.monotonic()
    cached = _period_prices.get(period.plan_id)
    if cached is not None and now - cached[0] < PERIOD_PRICES_SECONDS:
        return cached[1]
    specs = plan_price_specs(period.plan)
    if len(_period_prices) > 1000:
        _period_prices.clear()
    _period_prices[period.plan_id] = (now, specs)
    return specs


def preview_period_usage(*, period: BillingPeriod) -> UsagePreview:
    """Rate a period's usage so far with the one rating engine (priced meters always shown).

    The quantities come from the hourly rollups (`window_quantities`), in a number of queries
    that does not grow with the events stored; they equal what the close will bill.
    """
    meters = {m.pk: m for m in Meter.objects.all()}
    specs = period_price_specs(period=period)
    dimensions = price_dimensions(specs)
    usage = aggregation.window_group_quantities(
        customer_id=period.customer_id,
        start=period.start,
        end=period.end,
        meters=meters,
        dimensions=dimensions,
    )
    groups = set(usage) | {(pk, ()) for pk in specs if pk not in dimensions}
    lines = [
        usage_line(
            meter=meters[pk],
            spec=specs.get(pk),
            quantity=usage.get((pk, values), Decimal(0)),
            values=values,
        )
        for pk, values in sorted(
            groups, key=lambda g: (meters[g[0]].code, [(v is None, v or "") for v in g[1]])
        )
    ]
    return UsagePreview(period=period, lines=lines, specs=specs, meters=meters)


def list_customer_invoices(*, customer: Customer) -> QuerySet[Invoice]:
    """Newest first, with lines and their meters, in three queries."""
    return (
        Invoice.objects.filter(customer=customer)
        .select_related("period")
        .prefetch_related("lines__meter")
        .order_by("-period__start", "-pk")
    )


def line_for_event(*, event: UsageEvent) -> InvoiceLine | None:
    """The invoice line that billed an event (one query), or None while it is unbilled.

    The query finds the lines whose aggregate's window and id range hold the event (one per
    group of a rate card's meter, a handful); the event's group picks its line among them."""
    candidates = (
        InvoiceLine.objects.select_related("invoice", "aggregate")
        .filter(
            aggregate__customer_id=event.customer_id,
            aggregate__meter_id=event.meter_id,
            aggregate__window_start__lte=event.timestamp,
            aggregate__window_end__gt=event.timestamp,
            aggregate__event_pk_after__lt=event.pk,
            aggregate__event_pk_through__gte=event.pk,
        )
        .order_by("pk")
    )
    for line in candidates:
        assert line.aggregate is not None  # the filter goes through it
        if aggregation.in_group(event, line.aggregate.dimensions):
            return line
    return None


def events_for_line(*, line: InvoiceLine) -> QuerySet[UsageEvent]:
    """The events a line billed (one query; empty for cap credits and zero lines)."""
    aggregate = line.aggregate  # no query when the line has none
    if aggregate is None:
        return UsageEvent.objects.none()
    return aggregation.events_of_aggregate(aggregate).order_by("timestamp", "pk")


def period_for(*, customer: Customer, at: datetime) -> BillingPeriod | None:
    return BillingPeriod.objects.filter(customer=customer, start__lte=at, end__gt=at).first()


def current_period(*, customer: Customer, now: datetime) -> BillingPeriod | None:
    """The customer's period containing `now`, read only: its row, or, while beat has not
    created that row yet, the period the subscription's schedule puts there (unsaved; the
    next roll creates the same one). None without a subscription. For GETs:
    `subscriptions.current_period` creates the row instead."""
    period = period_for(customer=customer, at=now)
    if period is not None:
        return period
    subscription = (
        Subscription.objects.select_related("plan", "customer").filter(customer=customer).first()
    )
    if subscription is None:
        return None
    return scheduled_period(subscription=subscription, now=now)
