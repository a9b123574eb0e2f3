"""The budget rules themselves, pure (no query): what a valid budget is, which thresholds a
spend has crossed, the status it gives, and which cap limits what a period may bill.

The check (services), the reads (selectors), the API, the portal and the admin all decide
through these functions, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable

from budgets.models import BudgetCap, BudgetPeriodState
from invoicing.hooks import PeriodCap

MAX_CAP_MINOR = 10**15
MAX_THRESHOLDS = 10

ACTIVE = BudgetPeriodState.Status.ACTIVE
WARNING = BudgetPeriodState.Status.WARNING
PAUSED = BudgetPeriodState.Status.PAUSED


def cap_error(cap_minor: object) -> str | None:
    """Why `cap_minor` is not a cap (None: it is one, or None for no cap)."""
    if cap_minor is None:
        return None
    if isinstance(cap_minor, bool) or not isinstance(cap_minor, int) or cap_minor <= 0:
        return "must be a positive integer in minor units, or null for no cap"
    if cap_minor > MAX_CAP_MINOR:
        return "must be at most 10^15"
    return None


def thresholds_error(thresholds: object) -> str | None:
    """Why `thresholds` are not 1 to 10 distinct whole percentages (None: they are)."""
    if not isinstance(thresholds, list) or any(
        isinstance(t, bool) or not isinstance(t, int) for t in thresholds
    ):
        return "Thresholds are a list of whole percentages, e.g. [50, 80, 100]."
    if not thresholds:
        return "Enter at least one threshold, e.g. 50, 80, 100."
    if any(not 1 <= t <= 100 for t in thresholds):
        return "Each threshold is a percentage between 1 and 100."
    if len(set(thresholds)) != len(thresholds):
        return "Each threshold may appear once."
    if len(thresholds) > MAX_THRESHOLDS:
        return f"At most {MAX_THRESHOLDS} thresholds."
    return None


def validate_budget(*, cap_minor: object, thresholds: object, action: object) -> dict[str, str]:
    """Field name -> message for everything wrong with a budget (empty: it is valid)."""
    errors: dict[str, str] = {}
    if (message := cap_error(cap_minor)) is not None:
        errors["cap_minor"] = message
    if (message := thresholds_error(thresholds)) is not None:
        errors["thresholds"] = message
    if action not in BudgetCap.Action.values:
        errors["action"] = f"must be one of {', '.join(BudgetCap.Action.values)}"
    return errors


def crossed_thresholds(
    *, cap_minor: int | None, thresholds: Iterable[int], spent: int
) -> list[int]:
    """The thresholds (percent of the cap) that `spent` has reached, in ascending order."""
    if cap_minor is None:
        return []
    return sorted(t for t in thresholds if spent * 100 >= t * cap_minor)


def acknowledged(*, state: BudgetPeriodState | None, cap_minor: int | None) -> bool:
    """Whether the period's acknowledgement covers this cap: only the cap it acknowledged,
    never one set afterwards."""
    return (
        state is not None
        and cap_minor is not None
        and state.acknowledged_cap_minor is not None
        and state.acknowledged_cap_minor == cap_minor
    )


def status_for(*, cap: BudgetCap | None, state: BudgetPeriodState | None, spent: int) -> str:
    """`paused` at or past a `pause` cap that this period's acknowledgement does not cover,
    `warning` once a threshold is crossed, else `active` (also without a cap)."""
    if cap is None or cap.cap_minor is None:
        return ACTIVE
    if (
        cap.action == BudgetCap.Action.PAUSE
        and spent >= cap.cap_minor
        and not acknowledged(state=state, cap_minor=cap.cap_minor)
    ):
        return PAUSED
    crossed = crossed_thresholds(cap_minor=cap.cap_minor, thresholds=cap.thresholds, spent=spent)
    return WARNING if crossed else ACTIVE


def cap_limiting_period(
    *, state: BudgetPeriodState | None, current_cap_minor: int | None
) -> PeriodCap | None:
    """What limits a period's bill: the cap in force at the period's last check (a later
    change does not reach back), none if the period's acknowledgement covers that cap; a
    period never checked is limited by the current cap. Usage acknowledged under an earlier
    cap of the period is billed whatever the cap set after it (the credit applies from the
    moment that cap was set)."""
    if state is None:
        return None if current_cap_minor is None else PeriodCap(cap_minor=current_cap_minor)
    if state.cap_minor is None or acknowledged(state=state, cap_minor=state.cap_minor):
        return None
    return PeriodCap(cap_minor=state.cap_minor, acknowledged_minor=state.acknowledged_spent_minor)
