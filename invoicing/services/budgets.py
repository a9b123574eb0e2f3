"""Budget caps: spend rated with the one rating engine, thresholds fired once, pause/resume.

A check locks the customer's BudgetPeriodState row for the current period, rates the period's
usage so far *inside* the lock (so serialized checks see increasing spend), inserts a
BudgetAlert per newly crossed threshold (unique per customer, period and threshold), and moves
the status. It returns what changed so the caller (notifications) can tell people, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db import IntegrityError, connection, transaction

from invoicing import selectors
from invoicing.models import BillingPeriod
from invoicing.services import subscriptions
from invoicing.services.audit import record_audit
from metering.models import BudgetAlert, BudgetCap, BudgetPeriodState, Customer

ACTIVE = BudgetPeriodState.Status.ACTIVE
WARNING = BudgetPeriodState.Status.WARNING
PAUSED = BudgetPeriodState.Status.PAUSED


class NothingPaused(Exception):
    """An acknowledgement arrived while the customer is not paused."""


class BudgetInvalid(Exception):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass
class BudgetStatus:
    """The allowance: where a customer stands in its current period, and what just changed."""

    customer: Customer
    status: str
    currency: str
    cap_minor: int | None
    spent_minor: int
    period_start: datetime | None
    period_end: datetime | None
    action: str | None = None
    thresholds: list[int] = field(default_factory=list)
    new_alerts: list[BudgetAlert] = field(default_factory=list)
    transition: str | None = None  # "paused" or "resumed" when this check changed it
    pause_count: int = 0
    resume_count: int = 0

    @property
    def remaining_minor(self) -> int | None:
        if self.cap_minor is None:
            return None
        return max(self.cap_minor - self.spent_minor, 0)


def validate_budget(*, cap_minor: object, thresholds: object, action: object) -> dict[str, str]:
    errors: dict[str, str] = {}
    if cap_minor is not None and (
        isinstance(cap_minor, bool) or not isinstance(cap_minor, int) or cap_minor <= 0
    ):
        errors["cap_minor"] = "must be a positive integer in minor units, or null for no cap"
    elif isinstance(cap_minor, int) and cap_minor > 10**15:
        errors["cap_minor"] = "must be at most 10^15"
    if (
        not isinstance(thresholds, list)
        or not 1 <= len(thresholds) <= 10
        or any(isinstance(t, bool) or not isinstance(t, int) for t in thresholds)
        or any(not 1 <= t <= 100 for t in thresholds)
        or len(set(thresholds)) != len(thresholds)
    ):
        errors["thresholds"] = "must be 1 to 10 distinct whole percentages between 1 and 100"
    if action not in BudgetCap.Action.values:
        errors["action"] = f"must be one of {', '.join(BudgetCap.Action.values)}"
    return errors


def customers_to_check(customer_ids: set[int]) -> tuple[dict[str, int], list[Customer]]:
    """Split a batch's customers in one query: ({external id: pk} of those with nothing to
    check -- no cap and not paused, so `active`), [the capped or paused ones, loaded]. Runs
    after every ingestion request, so it is plain SQL that builds no model instance in the
    common case (the ORM's compilation of this query cost more than the query)."""
    if not customer_ids:
        return {}, []
    marks = ", ".join(["%s"] * len(customer_ids))
    sql = (
        f"SELECT c.id, c.external_id, c.status, EXISTS (SELECT 1 FROM {BudgetCap._meta.db_table}"  # noqa: S608 - placeholders only
        " b WHERE b.customer_id = c.id AND b.cap_minor IS NOT NULL)"
        f" FROM {Customer._meta.db_table} c WHERE c.id IN ({marks}) ORDER BY c.id"
    )
    active: dict[str, int] = {}
    to_check: list[int] = []
    with connection.cursor() as cursor:
        cursor.execute(sql, sorted(customer_ids))
        for pk, external_id, status, capped in cursor.fetchall():
            if capped or status == Customer.Status.PAUSED:
                to_check.append(pk)
            else:
                active[external_id] = pk
    customers = list(Customer.objects.filter(pk__in=to_check).order_by("pk")) if to_check else []
    return active, customers


def _state_for(customer: Customer, period: BillingPeriod) -> BudgetPeriodState:
    """The period's state row, created if missing, and locked for this transaction."""
    try:
        with transaction.atomic():
            BudgetPeriodState.objects.get_or_create(
                customer=customer,
                period_start=period.start,
                defaults={"period_end": period.end},
            )
    except IntegrityError:
        pass  # created concurrently: lock it below
    return BudgetPeriodState.objects.select_for_update().get(
        customer=customer, period_start=period.start
    )


def _status_for(
    *, cap: BudgetCap | None, state: BudgetPeriodState, spent: int, crossed: bool
) -> str:
    if cap is None or cap.cap_minor is None:
        return ACTIVE
    if (
        cap.action == BudgetCap.Action.PAUSE
        and spent >= cap.cap_minor
        and not state.acknowledged_at
    ):
        return PAUSED
    return WARNING if crossed else ACTIVE


def evaluate_budget(
    *,
    customer: Customer,
    now: datetime,
    actor: object = None,
    known: tuple[BillingPeriod, int] | None = None,
) -> BudgetStatus:
    """Check a customer's spend against its cap now; fire new thresholds; pause or resume.

    `known`: the current period and its spend so far as the caller has just rated them (the
    portal's dashboard): the read-only answer uses them instead of rating the period again;
    a check that records something rates it again under the lock.
    """
    if known is not None:
        period, known_spent = known
    else:
        period, known_spent = subscriptions.current_period(customer=customer, now=now), None
    if period is None:
        return BudgetStatus(customer, ACTIVE, customer.currency, None, 0, None, None)
    unchanged = _unchanged_status(customer=customer, period=period, spent=known_spent)
    if unchanged is not None:
        return unchanged  # the common case: a read, no lock, no write
    with transaction.atomic():
        state = _state_for(customer, period)
        cap = BudgetCap.objects.filter(customer=customer).first()
        spent = selectors.preview_period_usage(period=period).total_minor
        new_alerts: list[BudgetAlert] = []
        crossed = False
        if cap is not None and cap.cap_minor is not None:
            for threshold in sorted(cap.thresholds):
                if spent * 100 < threshold * cap.cap_minor:
                    continue
                crossed = True
                alert, created = BudgetAlert.objects.get_or_create(
                    customer=customer,
                    period_start=period.start,
                    cap_minor=cap.cap_minor,
                    threshold=threshold,
                    defaults={"spent_minor": spent},
                )
                if created:
                    new_alerts.append(alert)
        status = _status_for(cap=cap, state=state, spent=spent, crossed=crossed)
        previous = state.status
        if state.checked_at is None and _customer_paused(customer):
            # The period's first check: a customer still paused from an earlier period resumes
            # (or stays paused) here, so the change is audited and the platform told.
            previous = PAUSED
        transition = None
        if status == PAUSED and previous != PAUSED:
            transition = "paused"
            state.paused_at = now
            state.pause_count += 1
        elif status != PAUSED and previous == PAUSED:
            transition = "resumed"
            state.resume_count += 1
        state.status = status
        state.spent_minor = spent
        state.cap_minor = cap.cap_minor if cap else None
        state.checked_at = now
        state.save()
        _mirror_customer_status(customer, paused=status == PAUSED)
        if transition:
            record_audit(
                action=f"budget.{transition}",
                obj=state,
                user=actor,
                customer_external_id=customer.external_id,
                data={
                    "spent_minor": spent,
                    "cap_minor": state.cap_minor,
                    "period_start": period.start,
                },
            )
    return _result(
        customer=customer,
        period=period,
        cap=cap,
        state=state,
        status=status,
        spent=spent,
        new_alerts=new_alerts,
        transition=transition,
    )


def _unchanged_status(
    *, customer: Customer, period: BillingPeriod, spent: int | None = None
) -> BudgetStatus | None:
    """The status when a check would record nothing (no new threshold, no transition, no
    first check of the period for a paused customer), else None: agents ask for the allowance
    before every task, so the answer must not cost a locked write and a commit."""
    cap = BudgetCap.objects.filter(customer=customer).first()
    state = BudgetPeriodState.objects.filter(customer=customer, period_start=period.start).first()
    capped = cap is not None and cap.cap_minor is not None
    if state is None and (capped or customer.status == Customer.Status.PAUSED):
        return None  # the period's first check of a capped or paused customer records it
    if spent is None:
        spent = selectors.preview_period_usage(period=period).total_minor
    crossed: set[int] = set()
    if capped:
        crossed = {t for t in cap.thresholds if spent * 100 >= t * cap.cap_minor}
        alerted = set(
            BudgetAlert.objects.filter(
                customer=customer, period_start=period.start, cap_minor=cap.cap_minor
            ).values_list("threshold", flat=True)
        )
        if not crossed <= alerted:
            return None
    if state is None:
        status = ACTIVE
    else:
        status = _status_for(cap=cap, state=state, spent=spent, crossed=bool(crossed))
        if status != state.status or (state.cap_minor != (cap.cap_minor if cap else None)):
            return None
    return _result(
        customer=customer, period=period, cap=cap, state=state, status=status, spent=spent
    )


def _result(
    *,
    customer: Customer,
    period: BillingPeriod,
    cap: BudgetCap | None,
    state: BudgetPeriodState | None,
    status: str,
    spent: int,
    new_alerts: list[BudgetAlert] | None = None,
    transition: str | None = None,
) -> BudgetStatus:
    return BudgetStatus(
        customer=customer,
        status=status,
        currency=period.plan.currency,
        cap_minor=cap.cap_minor if cap else None,
        spent_minor=spent,
        period_start=period.start,
        period_end=period.end,
        action=cap.action if cap else None,
        thresholds=sorted(cap.thresholds) if cap else [],
        new_alerts=new_alerts or [],
        transition=transition,
        pause_count=state.pause_count if state else 0,
        resume_count=state.resume_count if state else 0,
    )


def _customer_paused(customer: Customer) -> bool:
    """Whether the customer is paused now (read from the database, not a stale instance)."""
    return Customer.objects.filter(pk=customer.pk, status=Customer.Status.PAUSED).exists()


def _mirror_customer_status(customer: Customer, *, paused: bool) -> None:
    """Keep Customer.status in step, so finance staff can filter paused customers."""
    if customer.status == Customer.Status.ARCHIVED:
        return
    wanted = Customer.Status.PAUSED if paused else Customer.Status.ACTIVE
    if customer.status != wanted:
        Customer.objects.filter(pk=customer.pk).update(status=wanted)
        customer.status = wanted


@transaction.atomic
def set_budget_cap(
    *,
    customer: Customer,
    cap_minor: int | None,
    thresholds: list[int],
    action: str,
    now: datetime,
    actor: object = None,
    actor_label: str = "",
) -> BudgetStatus:
    """Set, change or remove (cap_minor=None) the cap; re-check at once (raising it resumes).

    `actor` is a Django user (admin, portal); `actor_label` names any other caller (an API key).
    """
    errors = validate_budget(cap_minor=cap_minor, thresholds=thresholds, action=action)
    if errors:
        raise BudgetInvalid(errors)
    cap, _ = BudgetCap.objects.select_for_update().get_or_create(customer=customer)
    before = {"cap_minor": cap.cap_minor, "thresholds": cap.thresholds, "action": cap.action}
    cap.cap_minor = cap_minor
    cap.thresholds = sorted(thresholds)
    cap.action = action
    cap.save()
    record_audit(
        action="budget.cap_changed",
        obj=cap,
        user=actor,
        customer_external_id=customer.external_id,
        data={
            "by": getattr(actor, "username", "") or actor_label or "api",
            "before": before,
            "after": {"cap_minor": cap_minor, "thresholds": cap.thresholds, "action": action},
        },
    )
    return evaluate_budget(customer=customer, now=now, actor=actor)


@transaction.atomic
def acknowledge_pause(
    *, customer: Customer, now: datetime, actor: object = None, actor_label: str = ""
) -> BudgetStatus:
    """Resume a paused customer for the rest of the period (the cap no longer limits it)."""
    period = subscriptions.current_period(customer=customer, now=now)
    if period is None:
        raise NothingPaused("the customer has no billing period")
    state = _state_for(customer, period)
    if state.status != PAUSED:
        raise NothingPaused("nothing is paused")
    state.acknowledged_at = now
    state.acknowledged_by = getattr(actor, "username", "") or actor_label or "api"
    state.save(update_fields=["acknowledged_at", "acknowledged_by"])
    record_audit(
        action="budget.acknowledged",
        obj=state,
        user=actor,
        customer_external_id=customer.external_id,
        data={"by": state.acknowledged_by, "period_start": period.start},
    )
    return evaluate_budget(customer=customer, now=now, actor=actor)


def budget_status(*, customer: Customer, now: datetime) -> BudgetStatus:
    """The allowance, re-checked now (cheap for customers without a cap)."""
    return evaluate_budget(customer=customer, now=now)


def cap_for_period(*, customer_id: int, period_start: datetime) -> int | None:
    """The cap that limits what a closed period may bill: None when there is no cap or the
    customer acknowledged going over it in that period."""
    state = BudgetPeriodState.objects.filter(
        customer_id=customer_id, period_start=period_start
    ).first()
    if state is not None:
        # The cap in force at the period's last check (a later change does not reach back).
        return None if state.acknowledged_at is not None else state.cap_minor
    cap = BudgetCap.objects.filter(customer_id=customer_id).values_list("cap_minor", flat=True)
    return cap.first()
