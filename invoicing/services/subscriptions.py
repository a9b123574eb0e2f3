"""Subscriptions and the billing periods they produce.

Period rows are materialised ahead of use: each subscription keeps `periods_until`, the end of
its latest period row, so the beat task creates the next period of every subscription whose
latest period has ended with one indexed query, and missed runs catch up period by period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from http import HTTPStatus
from zoneinfo import ZoneInfo

from django.db import connection, transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from audit.services import record_audit
from billing_project.errors import DomainError
from invoicing import periods
from invoicing.bulk import insert_rows
from invoicing.models import BillingPeriod, Interval, PricePlan, Subscription
from metering import services as metering_services
from metering.models import Customer

# Enough for a month of hourly periods after an outage; the next beat run continues.
MAX_PERIODS_PER_RUN = 1000


class SubscriptionInvalid(DomainError):
    """The customer cannot be put on the plan (422); `field` names the input at fault."""

    code = "invalid_subscription"

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message, field=field)


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


@dataclass(frozen=True)
class _Schedule:
    """What a subscription's next periods depend on."""

    anchor: datetime
    started_at: datetime
    periods_until: datetime | None
    interval: str  # the current plan's
    tz: str  # the customer's

    @classmethod
    def of(cls, subscription: Subscription) -> _Schedule:
        return cls(
            anchor=subscription.anchor,
            started_at=subscription.started_at,
            periods_until=subscription.periods_until,
            interval=subscription.plan.interval,
            tz=subscription.customer.timezone,
        )


@lru_cache(maxsize=4096)
def _period_from(start: datetime, anchor: datetime, interval: str, tz: str) -> periods.Period:
    """The period that starts at `start` under the interval and zone.

    When the interval or time zone changed, `start` may not be a boundary of the new schedule:
    the period then runs from `start` to the schedule's next boundary, so periods still tile.
    (Pure, and the same few arguments recur for every subscription rolled at once.)
    """
    bounds = periods.period_containing(start, anchor=anchor, interval=interval, tz=tz)
    return periods.Period(start, bounds.end)


def _missing_bounds(schedule: _Schedule, *, now: datetime) -> list[periods.Period]:
    """The bounds of the periods from where the subscription's periods end up to the one
    containing `now` (at most MAX_PERIODS_PER_RUN; the next run continues)."""
    start = schedule.periods_until or (
        periods.period_containing(
            schedule.started_at, anchor=schedule.anchor, interval=schedule.interval, tz=schedule.tz
        ).start
    )
    missing: list[periods.Period] = []
    while start <= now and len(missing) < MAX_PERIODS_PER_RUN:
        bounds = _period_from(start, schedule.anchor, schedule.interval, schedule.tz)
        missing.append(bounds)
        start = bounds.end
    return missing


def scheduled_period(*, subscription: Subscription, now: datetime) -> BillingPeriod | None:
    """The period containing `now` exactly as ensure_periods will create it, unsaved (pure:
    reads nothing beyond the subscription, its plan and customer). None when the schedule
    puts no new period there (its rows already cover `now`, or more than MAX_PERIODS_PER_RUN
    are missing)."""
    missing = _missing_bounds(_Schedule.of(subscription), now=now)
    if not missing or not missing[-1].start <= now < missing[-1].end:
        return None
    return BillingPeriod(
        customer=subscription.customer,
        plan=subscription.plan,
        start=missing[-1].start,
        end=missing[-1].end,
        status=BillingPeriod.Status.OPEN,
    )


def ensure_periods(*, subscription: Subscription, now: datetime) -> list[BillingPeriod]:
    """Create the missing period rows of one subscription up to the one containing `now`
    (idempotent: the subscription row is locked, and (customer, start) is unique)."""
    with transaction.atomic():
        locked = (
            Subscription.objects.select_for_update()
            .select_related("customer", "plan")
            .get(pk=subscription.pk)
        )
        missing = [
            BillingPeriod(
                customer=locked.customer,
                plan=locked.plan,
                start=bounds.start,
                end=bounds.end,
                status=BillingPeriod.Status.OPEN,
            )
            for bounds in _missing_bounds(_Schedule.of(locked), now=now)
        ]
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
            # Plain rows, not model instances: a run may roll every subscription there is.
            due = list(
                locked.filter(periods_until__lte=now)
                .order_by("pk")
                .values_list(
                    "pk",
                    "customer_id",
                    "plan_id",
                    "anchor",
                    "started_at",
                    "periods_until",
                    "plan__interval",
                    "customer__timezone",
                )[:batch_size]
            )
            if not due:
                break
            new_periods = [
                (customer_id, plan_id, bounds)
                for _, customer_id, plan_id, anchor, started_at, until, interval, tz in due
                for bounds in _missing_bounds(
                    _Schedule(anchor, started_at, until, interval, tz), now=now
                )
            ]
            insert_rows(
                BillingPeriod,
                {
                    "customer_id": [customer_id for customer_id, _, _ in new_periods],
                    "plan_id": [plan_id for _, plan_id, _ in new_periods],
                    "start": [bounds.start for _, _, bounds in new_periods],
                    "end": [bounds.end for _, _, bounds in new_periods],
                },
                ignore_conflicts=True,
            )
            # One UPDATE: each subscription's periods now end where its latest period ends.
            latest_end = (
                BillingPeriod.objects.filter(customer_id=OuterRef("customer_id"))
                .order_by("-end")
                .values("end")[:1]
            )
            Subscription.objects.filter(pk__in=[row[0] for row in due]).update(
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


class EarlyCloseRefused(DomainError):
    """The period cannot be ended early (409); nothing changed."""

    status = HTTPStatus.CONFLICT
    code = "early_close_refused"


EARLY_CLOSE_REASON_MAX = 1000


def end_period_early(
    *, period_id: int, now: datetime, reason: str, user: object = None
) -> tuple[BillingPeriod, BillingPeriod]:
    """End a running period now, for finance staff closing a period early (audited, with a
    reason): the period's end becomes `now` and the customer's next period starts `now`,
    running to the schedule's next boundary (the rest of the old window), after which the
    regular periods follow. Returns (the ended period, the new one).

    Why the period ends now rather than keeping its window and handing the rest to the next
    invoice: an invoice states the window it bills, and the usage after `now` is not in it.
    Ending the period makes both invoices true: each bills exactly the events inside its own
    half-open window, and nothing is counted twice or lost. The ended period then closes like
    any other, once its grace period (BILLING_GRACE_PERIOD, for late events) has passed.
    """
    reason = reason.strip()
    if not reason:
        raise EarlyCloseRefused("a reason is required to close a period early")
    if len(reason) > EARLY_CLOSE_REASON_MAX:
        raise EarlyCloseRefused(f"the reason is longer than {EARLY_CLOSE_REASON_MAX} characters")
    with transaction.atomic():
        period = BillingPeriod.objects.select_related("customer").get(pk=period_id)
        subscription = (
            Subscription.objects.select_for_update()
            .select_related("customer", "plan")
            .filter(customer_id=period.customer_id)
            .first()
        )
        period = BillingPeriod.objects.select_for_update().get(pk=period_id)
        if subscription is None:
            raise EarlyCloseRefused(f"{period}: the customer has no subscription")
        if period.status != BillingPeriod.Status.OPEN or period.end <= now:
            raise EarlyCloseRefused(
                f"{period} has ended already: it closes on its own (or use Close now)"
            )
        if period.start >= now:
            raise EarlyCloseRefused(f"{period} has not started yet")
        later = BillingPeriod.objects.filter(customer_id=period.customer_id, start__gte=period.end)
        if later.exists():
            raise EarlyCloseRefused(f"{period}: a later period exists already")
        old_end = period.end
        period.end = now
        period.save(update_fields=["end"])
        subscription.periods_until = now
        subscription.save(update_fields=["periods_until", "updated_at"])
        bounds = _period_from(
            now, subscription.anchor, subscription.plan.interval, subscription.customer.timezone
        )
        following = BillingPeriod.objects.create(
            customer=subscription.customer,
            plan=subscription.plan,
            start=bounds.start,
            end=bounds.end,
            status=BillingPeriod.Status.OPEN,
        )
        subscription.periods_until = following.end
        subscription.save(update_fields=["periods_until", "updated_at"])
        record_audit(
            action="period.closed_early",
            obj=period,
            user=user,
            customer_external_id=period.customer.external_id,
            data={
                "reason": reason,
                "start": period.start.isoformat(),
                "scheduled_end": old_end.isoformat(),
                "end": now.isoformat(),
                "next_period_id": following.pk,
                "next_period_end": following.end.isoformat(),
            },
        )
    return period, following
