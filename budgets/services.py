"""Writes of the budgets. Each entry point validates, writes, audits and tells people (through
notifications' outbox, after commit) in one call and one transaction; there is no inner
service that skips the messages.

- check_budgets_after_ingest: after every ingested batch (registered in metering.hooks);
- check_all_budgets: beat, every minute (new periods resume paused customers);
- set_budget_cap, acknowledge_pause: the explicit actions (API, portal, admin).

A check locks the customer's BudgetPeriodState row for the current period, rates the period's
usage so far *inside* the lock (so serialized checks see increasing spend), inserts a
BudgetAlert per newly crossed threshold (unique per customer, period, cap and threshold), and
moves the status; a check that would record nothing is a read (selectors.status_if_unchanged)
and takes no lock. A pause or a resume is recorded with its cause and who caused it (the key
that posted the usage, the user or key that changed the cap or acknowledged, or the system)
in the audit log and the customer's history (BudgetEvent).

An acknowledgement covers the cap it acknowledged: a cap set afterwards ends it, so the pause
and the cap credit hold again from that moment (what was spent under the acknowledgement is
still billed, see rules.cap_limiting_period).
"""

from __future__ import annotations

import logging
from datetime import datetime
from http import HTTPStatus

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import SYSTEM, record_audit
from billing_project.errors import DomainError
from budgets import messages, rules, selectors
from budgets.models import BudgetAlert, BudgetCap, BudgetEvent, BudgetPeriodState
from budgets.selectors import BudgetStatus
from invoicing import selectors as invoicing_selectors
from invoicing.models import BillingPeriod
from invoicing.services import subscriptions
from metering.models import ApiKey, Customer

logger = logging.getLogger(__name__)


class NothingPaused(DomainError):
    """An acknowledgement arrived while the customer is not paused (409)."""

    status = HTTPStatus.CONFLICT
    code = "nothing_paused"


class BudgetInvalid(DomainError):
    """The budget cannot be stored (422); `errors` maps a field to its message."""

    code = "invalid_budget"

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(fields=errors)
        self.errors = errors


# --- Checks --------------------------------------------------------------------------------

USAGE = BudgetEvent.Cause.USAGE
CAP_CHANGED = BudgetEvent.Cause.CAP_CHANGED
ACKNOWLEDGED = BudgetEvent.Cause.ACKNOWLEDGED
NEW_PERIOD = BudgetEvent.Cause.NEW_PERIOD


def _actor_name(actor: object, actor_label: str) -> str:
    """Who acted, as the audit log and the history name it."""
    return getattr(actor, "username", "") or actor_label or SYSTEM


def check_budgets_after_ingest(
    *, customer_ids: set[int], api_key: ApiKey | None = None, now: datetime | None = None
) -> dict[str, dict]:
    """Check the caps of the customers in a committed batch; tell people what changed. A pause
    it causes is recorded as done by `api_key`, the key that posted the batch.

    Returns each customer's status for the ingestion response, keyed by external id.
    """
    now = now or timezone.now()
    label = api_key.actor_label if api_key is not None else ""
    active, to_check = selectors.customers_to_check(customer_ids)
    statuses: dict[str, dict] = {
        external_id: {"status": rules.ACTIVE, "remaining_minor": None} for external_id in active
    }
    for customer in to_check:
        status = check_budget(customer=customer, now=now, actor_label=label)
        statuses[customer.external_id] = {
            "status": status.status,
            "remaining_minor": status.remaining_minor,
        }
    return statuses


def check_all_budgets(*, now: datetime) -> int:
    """Beat, every minute: re-check every capped or paused customer (new periods resume)."""
    ids = selectors.customer_ids_to_check()
    for customer in Customer.objects.filter(pk__in=ids).order_by("pk"):
        try:
            check_budget(customer=customer, now=now)
        except Exception:  # one customer's failure must not stop the others
            logger.exception("budget check of %s failed", customer.external_id)
    return len(ids)


def check_budget(*, customer: Customer, now: datetime, actor_label: str = "") -> BudgetStatus:
    """Check one customer's spend against its cap now: record new thresholds, pause or
    resume, audit, and queue the messages, in one transaction. `actor_label` names whoever
    brought the usage (an API key); the system otherwise."""
    with transaction.atomic():
        status = _check(customer=customer, now=now, cause=USAGE, actor_label=actor_label)
        messages.queue_budget_messages(status)
    return status


def _check(
    *,
    customer: Customer,
    now: datetime,
    cause: str,
    actor: object = None,
    actor_label: str = "",
) -> BudgetStatus:
    """The check itself; `cause` and the actor are what a pause or resume it records
    followed (usage, a cap change, an acknowledgement) and who brought it."""
    period = subscriptions.current_period(customer=customer, now=now)
    if period is None:
        return selectors.get_budget_status(customer=customer, now=now)
    unchanged = selectors.status_if_unchanged(customer=customer, period=period)
    if unchanged is not None:
        return unchanged  # the common case: a read, no lock, no write
    with transaction.atomic():
        state = _state_for(customer, period)
        cap = BudgetCap.objects.filter(customer=customer).first()
        spent = invoicing_selectors.preview_period_usage(period=period).total_minor
        new_alerts: list[BudgetAlert] = []
        if cap is not None and cap.cap_minor is not None:
            crossed = rules.crossed_thresholds(
                cap_minor=cap.cap_minor, thresholds=cap.thresholds, spent=spent
            )
            for threshold in crossed:
                alert, created = BudgetAlert.objects.get_or_create(
                    customer=customer,
                    period_start=period.start,
                    cap_minor=cap.cap_minor,
                    threshold=threshold,
                    defaults={"spent_minor": spent},
                )
                if created:
                    new_alerts.append(alert)
        status = rules.status_for(cap=cap, state=state, spent=spent)
        previous = state.status
        transition_cause = cause
        if state.checked_at is None and _customer_paused(customer):
            # The period's first check: a customer still paused from an earlier period resumes
            # (or stays paused) here, so the change is audited and the platform told.
            previous = rules.PAUSED
            transition_cause = NEW_PERIOD
        transition = None
        if status == rules.PAUSED and previous != rules.PAUSED:
            transition = BudgetEvent.Kind.PAUSED
            state.paused_at = now
            state.pause_count += 1
        elif status != rules.PAUSED and previous == rules.PAUSED:
            transition = BudgetEvent.Kind.RESUMED
            state.resume_count += 1
        state.status = status
        state.spent_minor = spent
        state.cap_minor = cap.cap_minor if cap else None
        state.checked_at = now
        state.save()
        _mirror_customer_status(customer, paused=status == rules.PAUSED)
        if transition:
            _record_transition(
                state=state,
                kind=transition,
                cause=transition_cause,
                by=_actor_name(actor, actor_label),
                actor=actor,
                actor_label=actor_label,
            )
    return selectors.status_of(
        customer=customer,
        period=period,
        cap=cap,
        state=state,
        spent=spent,
        status=status,
        new_alerts=new_alerts,
        transition=transition,
        cause=cause,
    )


def _record_transition(
    *,
    state: BudgetPeriodState,
    kind: str,
    cause: str,
    by: str,
    actor: object,
    actor_label: str,
) -> None:
    """A pause or resume, in the customer's history and the audit log, with who did it."""
    BudgetEvent.objects.create(
        customer=state.customer,
        period_start=state.period_start,
        kind=kind,
        sequence=state.pause_count if kind == BudgetEvent.Kind.PAUSED else state.resume_count,
        cause=cause,
        cap_minor=state.cap_minor,
        spent_minor=state.spent_minor,
        actor=by[:150],
    )
    record_audit(
        action=f"budget.{kind}",
        obj=state,
        user=actor,
        actor_label=actor_label,
        customer_external_id=state.customer.external_id,
        data={
            "spent_minor": state.spent_minor,
            "cap_minor": state.cap_minor,
            "period_start": state.period_start,
            "cause": cause,
            "by": by,
        },
    )


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


# --- Explicit actions ----------------------------------------------------------------------


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
    """Set, change or remove (cap_minor=None) the cap (API, portal, admin); re-check at once
    and tell people what that changed. Raising it resumes; a new cap ends the period's
    acknowledgement, so the pause and the cap credit hold again from now. Several thresholds
    the new cap finds crossed at once make one message.

    `actor` is a Django user (admin, portal); `actor_label` names any other caller (an API key).
    """
    errors = rules.validate_budget(cap_minor=cap_minor, thresholds=thresholds, action=action)
    if errors:
        raise BudgetInvalid(errors)
    with transaction.atomic():
        cap, _ = BudgetCap.objects.select_for_update().get_or_create(customer=customer)
        before = {"cap_minor": cap.cap_minor, "thresholds": cap.thresholds, "action": cap.action}
        cap.cap_minor = cap_minor
        cap.thresholds = sorted(thresholds)
        cap.action = action
        cap.save()
        data = {
            "by": _actor_name(actor, actor_label),
            "before": before,
            "after": {"cap_minor": cap_minor, "thresholds": cap.thresholds, "action": action},
        }
        if before["cap_minor"] != cap_minor:
            ended = _end_acknowledgement(customer=customer, now=now)
            if ended is not None:
                data["acknowledgement_ended"] = ended
        record_audit(
            action="budget.cap_changed",
            obj=cap,
            user=actor,
            actor_label=actor_label,
            customer_external_id=customer.external_id,
            data=data,
        )
        status = _check(
            customer=customer, now=now, cause=CAP_CHANGED, actor=actor, actor_label=actor_label
        )
        messages.queue_budget_messages(status)
    return status


def _end_acknowledgement(*, customer: Customer, now: datetime) -> dict | None:
    """A new cap: the current period's acknowledgement (if any) stops covering, and what was
    spent under it is kept as billed. Returns what ended, for the audit log."""
    period = subscriptions.current_period(customer=customer, now=now)
    if period is None:
        return None
    state = (
        BudgetPeriodState.objects.select_for_update()
        .filter(customer=customer, period_start=period.start)
        .first()
    )
    if state is None or state.acknowledged_cap_minor is None:
        return None
    spent = invoicing_selectors.preview_period_usage(period=period).total_minor
    ended = {"acknowledged_cap_minor": state.acknowledged_cap_minor, "spent_minor": spent}
    state.acknowledged_cap_minor = None
    state.acknowledged_spent_minor = max(state.acknowledged_spent_minor, spent)
    state.save(update_fields=["acknowledged_cap_minor", "acknowledged_spent_minor"])
    return ended


def acknowledge_pause(
    *, customer: Customer, now: datetime, actor: object = None, actor_label: str = ""
) -> BudgetStatus:
    """Resume a paused customer for the rest of the period: the acknowledgement covers the
    current cap (not one set later); tell the agent platform.

    The check runs first, so a pause the reads already report (usage no check had seen yet)
    is recorded before it is acknowledged."""
    with transaction.atomic():
        period = subscriptions.current_period(customer=customer, now=now)
        if period is None:
            raise NothingPaused("the customer has no billing period")
        pending = _check(customer=customer, now=now, cause=USAGE)
        messages.queue_budget_messages(pending)
        state = _state_for(customer, period)
        cap = BudgetCap.objects.filter(customer=customer).first()
        if state.status != rules.PAUSED or cap is None or cap.cap_minor is None:
            raise NothingPaused("nothing is paused")
        by = _actor_name(actor, actor_label)
        state.acknowledged_at = now
        state.acknowledged_by = by[:150]
        state.acknowledged_cap_minor = cap.cap_minor
        state.save(update_fields=["acknowledged_at", "acknowledged_by", "acknowledged_cap_minor"])
        record_audit(
            action="budget.acknowledged",
            obj=state,
            user=actor,
            actor_label=actor_label,
            customer_external_id=customer.external_id,
            data={"by": by, "period_start": period.start, "cap_minor": cap.cap_minor},
        )
        status = _check(
            customer=customer, now=now, cause=ACKNOWLEDGED, actor=actor, actor_label=actor_label
        )
        messages.queue_budget_messages(status)
    return status
