"""Subscriptions and the billing periods they produce.

Period rows are materialised ahead of use: each subscription keeps `periods_until`, the end of
its latest period row, so the beat task creates the next period of every subscription whose
latest period has ended with one indexed query, and missed runs catch up period by period.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from django.db import connection, transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from invoicing import periods
from invoicing.models import BillingPeriod, Interval, PricePlan, Subscription
from invoicing.services.audit import record_audit
from metering import services as metering_services
from metering.models import Customer

# Enough for a month of hourly periods after an outage; the next beat run continues.
MAX_PERIODS_PER_RUN = 1000


class SubscriptionInvalid(Exception):
    """The customer cannot be put on the plan; `field` names the input at fault."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


def default_anchor(*, interval: str, tz: str, now: datetime) -> datetime:
    """Calendar alignment: monthly on the 1st at local midnight, daily at local midnight,
    hourly on the UTC hour."""
    if interval == Interval.HOUR:
        return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    local = now.astimezone(ZoneInfo(tz))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    if interval == Interval.MONTH:
        midnight = midnight.replace(day=1)
    return midnight.replace(tzinfo=ZoneInfo(tz), fold=0).astimezone(UTC)


@transaction.atomic
def subscribe_customer(
    *,
    customer: Customer,
    plan: PricePlan,
    now: datetime,
    anchor: datetime | None = None,
    user: object = None,
) -> Subscription:
    """Put a customer on a plan. A new subscription starts its first period now; a change of
    plan applies from the next period (the current period keeps the plan it was opened with)."""
    if plan.currency != customer.currency:
        raise SubscriptionInvalid(
            f"plan {plan.code} bills in {plan.currency} but the customer pays in "
            f"{customer.currency}",
            field="plan",
        )
    subscription = Subscription.objects.select_for_update().filter(customer=customer).first()
    if subscription is None:
        subscription = Subscription.objects.create(
            customer=customer,
            plan=plan,
            anchor=anchor or default_anchor(interval=plan.interval, tz=customer.timezone, now=now),
            started_at=now,
        )
        ensure_periods(subscription=subscription, now=now)
        action = "subscription.created"
    elif subscription.plan_id != plan.pk:
        subscription.plan = plan
        subscription.save(update_fields=["plan", "updated_at"])
        action = "subscription.plan_changed"
    else:
        return subscription
    record_audit(
        action=action,
        obj=subscription,
        user=user,
        customer_external_id=customer.external_id,
        data={"plan": plan.code, "version": plan.version},
    )
    return subscription


@transaction.atomic
def provision_customer(
    *,
    external_id: str,
    name: str | None,
    emails: list[str] | None,
    currency: str | None,
    timezone_name: str | None,
    plan: PricePlan | None,
    now: datetime,
) -> tuple[Customer, bool]:
    """Create or update a customer and, if a plan is given, subscribe it (the operator's
    sign-up flow). All or nothing: a plan that does not fit leaves the customer unchanged."""
    if currency is None and plan is not None:
        if not Customer.objects.filter(external_id=external_id).exists():
            currency = plan.currency  # a new customer pays in its plan's currency
    customer, created = metering_services.upsert_customer(
        external_id=external_id,
        name=name,
        emails=emails,
        currency=currency,
        timezone_name=timezone_name,
    )
    if plan is not None:
        subscribe_customer(customer=customer, plan=plan, now=now)
    return customer, created


def _next_bounds(subscription: Subscription, start: datetime, plan: PricePlan) -> periods.Period:
    """The period that starts at `start` under the plan's interval and the customer's zone.

    When the interval or time zone changed, `start` may not be a boundary of the new schedule:
    the period then runs from `start` to the schedule's next boundary, so periods still tile.
    """
    customer = subscription.customer
    bounds = periods.period_containing(
        start, anchor=subscription.anchor, interval=plan.interval, tz=customer.timezone
    )
    return periods.Period(start, bounds.end)


def _first_start(subscription: Subscription) -> datetime:
    return periods.period_containing(
        subscription.started_at,
        anchor=subscription.anchor,
        interval=subscription.plan.interval,
        tz=subscription.customer.timezone,
    ).start


def _missing_periods(subscription: Subscription, *, now: datetime) -> list[BillingPeriod]:
    """Unsaved period rows from where the subscription's periods end up to the one
    containing `now` (at most MAX_PERIODS_PER_RUN; the next run continues)."""
    start = subscription.periods_until or _first_start(subscription)
    missing: list[BillingPeriod] = []
    while start <= now and len(missing) < MAX_PERIODS_PER_RUN:
        bounds = _next_bounds(subscription, start, subscription.plan)
        missing.append(
            BillingPeriod(
                customer=subscription.customer,
                plan=subscription.plan,
                start=bounds.start,
                end=bounds.end,
                status=BillingPeriod.Status.OPEN,
            )
        )
        start = bounds.end
    return missing


def ensure_periods(*, subscription: Subscription, now: datetime) -> list[BillingPeriod]:
    """Create the missing period rows of one subscription up to the one containing `now`
    (idempotent: the subscription row is locked, and (customer, start) is unique)."""
    with transaction.atomic():
        locked = (
            Subscription.objects.select_for_update()
            .select_related("customer", "plan")
            .get(pk=subscription.pk)
        )
        missing = _missing_periods(locked, now=now)
        if missing:
            BillingPeriod.objects.bulk_create(missing, ignore_conflicts=True)
            locked.periods_until = missing[-1].end
            locked.save(update_fields=["periods_until", "updated_at"])
    return missing


def roll_subscriptions(*, now: datetime, batch_size: int = 1000) -> int:
    """Create the next periods of every subscription whose latest period has ended, in
    batches (locked with SKIP LOCKED, so concurrent rollers share the work), and mark ended
    open periods `closing` (their grace period runs). Returns the periods created."""
    created = 0
    while True:
        with transaction.atomic():
            locked = Subscription.objects.select_for_update(skip_locked=True)
            if connection.vendor == "postgresql":
                locked = Subscription.objects.select_for_update(skip_locked=True, of=("self",))
            due = list(
                locked.select_related("customer", "plan")
                .filter(periods_until__lte=now)
                .order_by("pk")[:batch_size]
            )
            if not due:
                break
            new_periods: list[BillingPeriod] = []
            for subscription in due:
                new_periods.extend(_missing_periods(subscription, now=now))
            BillingPeriod.objects.bulk_create(new_periods, ignore_conflicts=True)
            # One UPDATE: each subscription's periods now end where its latest period ends.
            latest_end = (
                BillingPeriod.objects.filter(customer_id=OuterRef("customer_id"))
                .order_by("-end")
                .values("end")[:1]
            )
            Subscription.objects.filter(pk__in=[s.pk for s in due]).update(
                periods_until=Subquery(latest_end), updated_at=timezone.now()
            )
            created += len(new_periods)
    BillingPeriod.objects.filter(status=BillingPeriod.Status.OPEN, end__lte=now).update(
        status=BillingPeriod.Status.CLOSING
    )
    return created


def current_period(*, customer: Customer, now: datetime) -> BillingPeriod | None:
    """The customer's period containing `now`, creating it if beat has not yet."""
    period = BillingPeriod.objects.filter(customer=customer, start__lte=now, end__gt=now).first()
    if period is not None:
        return period
    subscription = Subscription.objects.filter(customer=customer).first()
    if subscription is None:
        return None
    ensure_periods(subscription=subscription, now=now)
    return BillingPeriod.objects.filter(customer=customer, start__lte=now, end__gt=now).first()


def grace_cutoff(*, now: datetime, grace_seconds: int) -> datetime:
    """Periods that ended at or before this instant are due to close."""
    return now - timedelta(seconds=grace_seconds)
