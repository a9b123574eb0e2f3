"""Reads of the budgets: where a customer stands (the allowance), the cap that limits a period,
the alert history. Nothing here locks, writes, pauses or queues a message: GET
/allowance, GET /budget and the portal answer from these; the state changes are made by
budgets.services where usage arrives, in the beat check and in explicit actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection

from budgets import rules
from budgets.models import (
    BudgetAlert,
    BudgetCap,
    BudgetEvent,
    BudgetPeriodState,
    default_thresholds,
)
from invoicing import selectors as invoicing_selectors
from invoicing.hooks import PeriodCap
from invoicing.models import BillingPeriod
from metering.models import Customer


@dataclass
class BudgetStatus:
    """Where a customer stands in its current period; after a check, also what it changed."""

    customer: Customer
    status: str
    currency: str
    cap_minor: int | None
    spent_minor: int
    period_start: datetime | None
    period_end: datetime | None
    action: str | None = None
    thresholds: list[int] = field(default_factory=default_thresholds)
    acknowledged: bool = False  # the period's acknowledgement covers this cap
    new_alerts: list[BudgetAlert] = field(default_factory=list)
    transition: str | None = None  # "paused" or "resumed" when the check changed it
    cause: str | None = None  # what the check followed: a BudgetEvent.Cause
    pause_count: int = 0
    resume_count: int = 0

    @property
    def remaining_minor(self) -> int | None:
        if self.cap_minor is None:
            return None
        return max(self.cap_minor - self.spent_minor, 0)


def status_of(
    *,
    customer: Customer,
    period: BillingPeriod | None,
    cap: BudgetCap | None,
    state: BudgetPeriodState | None,
    spent: int,
    status: str,
    new_alerts: list[BudgetAlert] | None = None,
    transition: str | None = None,
    cause: str | None = None,
) -> BudgetStatus:
    """The one place a BudgetStatus is assembled (reads and checks alike)."""
    return BudgetStatus(
        customer=customer,
        status=status,
        currency=period.plan.currency if period is not None else customer.currency,
        cap_minor=cap.cap_minor if cap else None,
        spent_minor=spent,
        period_start=period.start if period is not None else None,
        period_end=period.end if period is not None else None,
        action=cap.action if cap else None,
        thresholds=sorted(cap.thresholds) if cap else default_thresholds(),
        acknowledged=rules.acknowledged(state=state, cap_minor=cap.cap_minor if cap else None),
        new_alerts=new_alerts or [],
        transition=transition,
        cause=cause,
        pause_count=state.pause_count if state else 0,
        resume_count=state.resume_count if state else 0,
    )


def get_budget_status(
    *, customer: Customer, now: datetime, known: tuple[BillingPeriod, int] | None = None
) -> BudgetStatus:
    """The allowance now, read only: the status the rules give the period's spend so far.

    `known`: the current period and its spend as the caller has just rated them (the portal's
    dashboard), so the period is not rated twice.
    """
    period: BillingPeriod | None
    spent: int | None
    if known is not None:
        period, spent = known
    else:
        period = invoicing_selectors.current_period(customer=customer, now=now)
        spent = None
    cap = BudgetCap.objects.filter(customer=customer).first()
    if period is None:  # no plan yet: nothing is spent, the stored cap is shown
        return status_of(
            customer=customer, period=None, cap=cap, state=None, spent=0, status=rules.ACTIVE
        )
    state = BudgetPeriodState.objects.filter(customer=customer, period_start=period.start).first()
    if spent is None:
        spent = invoicing_selectors.preview_period_usage(period=period).total_minor
    status = rules.status_for(cap=cap, state=state, spent=spent)
    return status_of(
        customer=customer, period=period, cap=cap, state=state, spent=spent, status=status
    )


def status_if_unchanged(*, customer: Customer, period: BillingPeriod) -> BudgetStatus | None:
    """The status when a check would record nothing (no new threshold, no transition, no
    first check of the period for a capped or paused customer), else None. A check asks this
    first: ingestion runs one per request, and the answer must not cost a locked write."""
    cap = BudgetCap.objects.filter(customer=customer).first()
    state = BudgetPeriodState.objects.filter(customer=customer, period_start=period.start).first()
    cap_minor = cap.cap_minor if cap is not None else None  # None: no cap
    if state is None and (cap_minor is not None or customer.status == Customer.Status.PAUSED):
        return None  # the period's first check of a capped or paused customer records it
    spent = invoicing_selectors.preview_period_usage(period=period).total_minor
    if cap is not None and cap_minor is not None:
        crossed = rules.crossed_thresholds(
            cap_minor=cap_minor, thresholds=cap.thresholds, spent=spent
        )
        alerted = set(
            BudgetAlert.objects.filter(
                customer=customer, period_start=period.start, cap_minor=cap_minor
            ).values_list("threshold", flat=True)
        )
        if not set(crossed) <= alerted:
            return None
    status = rules.status_for(cap=cap, state=state, spent=spent)
    if state is not None and (status != state.status or state.cap_minor != cap_minor):
        return None
    return status_of(
        customer=customer, period=period, cap=cap, state=state, spent=spent, status=status
    )


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


def customer_ids_to_check() -> set[int]:
    """Every customer the beat check looks at: capped, or paused (a new period resumes it)."""
    capped = BudgetCap.objects.filter(cap_minor__isnull=False).values_list("customer_id", flat=True)
    paused = Customer.objects.filter(status=Customer.Status.PAUSED).values_list("pk", flat=True)
    return set(capped) | set(paused)


def caps_for_periods(periods: Sequence[BillingPeriod]) -> dict[int, PeriodCap | None]:
    """Period pk -> what limits its bill (rules.cap_limiting_period), in two queries: the
    close asks this for a batch (through invoicing.hooks)."""
    customer_ids = {p.customer_id for p in periods}
    starts = {p.start for p in periods}
    states = {
        (s.customer_id, s.period_start): s
        for s in BudgetPeriodState.objects.filter(
            customer_id__in=customer_ids, period_start__in=starts
        )
    }
    current = dict(
        BudgetCap.objects.filter(customer_id__in=customer_ids).values_list(
            "customer_id", "cap_minor"
        )
    )
    return {
        period.pk: rules.cap_limiting_period(
            state=states.get((period.customer_id, period.start)),
            current_cap_minor=current.get(period.customer_id),
        )
        for period in periods
    }


def list_budget_alerts(*, customer: Customer, limit: int = 100) -> list[BudgetAlert]:
    """The thresholds crossed, newest first."""
    return list(
        BudgetAlert.objects.filter(customer=customer).order_by("-created_at", "-pk")[:limit]
    )


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a customer's budget history: a threshold crossed, a pause or a resume."""

    at: datetime
    period_start: datetime
    event: str  # "80% threshold", "Paused", "Resumed"
    cause: str  # why a pause or resume happened, for people ("" for a threshold)
    by: str  # who did it: a user name, an API key, "system" ("" for a threshold)
    spent_minor: int
    cap_minor: int | None


def list_budget_history(*, customer: Customer, limit: int = 100) -> list[HistoryEntry]:
    """The thresholds crossed, the pauses and the resumes, newest first; at the same instant a
    pause or resume comes before the thresholds (it follows from them)."""
    ranked: list[tuple[datetime, int, int, HistoryEntry]] = [
        (
            alert.created_at,
            0,
            alert.pk,
            HistoryEntry(
                at=alert.created_at,
                period_start=alert.period_start,
                event=f"{alert.threshold}% threshold",
                cause="",
                by="",
                spent_minor=alert.spent_minor,
                cap_minor=alert.cap_minor,
            ),
        )
        for alert in list_budget_alerts(customer=customer, limit=limit)
    ]
    events = BudgetEvent.objects.filter(customer=customer).order_by("-created_at", "-pk")
    ranked += [
        (
            event.created_at,
            1,
            event.pk,
            HistoryEntry(
                at=event.created_at,
                period_start=event.period_start,
                event=event.get_kind_display(),
                cause=event.get_cause_display(),
                by=event.actor,
                spent_minor=event.spent_minor,
                cap_minor=event.cap_minor,
            ),
        )
        for event in events[:limit]
    ]
    ranked.sort(key=lambda item: item[:3], reverse=True)
    return [entry for *_, entry in ranked[:limit]]


def get_budget_cap(*, customer: Customer) -> BudgetCap | None:
    return BudgetCap.objects.filter(customer=customer).first()
