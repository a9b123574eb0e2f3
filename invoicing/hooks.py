"""One extension point: the cap that limits what a closed period may bill.

budgets rates a period's spend with invoicing's selectors, so it sits above invoicing and
invoicing must not import it; yet the close writes a cap-credit line for usage beyond an
unacknowledged cap. budgets registers its selector here when Django starts
(BudgetsConfig.ready). A close with nothing registered refuses to run rather than bill past
a cap silently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from django.core.exceptions import ImproperlyConfigured

from invoicing.models import BillingPeriod

PeriodCaps = Callable[[Sequence[BillingPeriod]], dict[int, int | None]]
_period_caps: PeriodCaps | None = None


def register_period_caps(function: PeriodCaps) -> None:
    global _period_caps
    _period_caps = function


def period_caps(periods: Sequence[BillingPeriod]) -> dict[int, int | None]:
    """Period pk -> the cap in minor units that limits it, or None (no cap, or acknowledged)."""
    if not periods:
        return {}
    if _period_caps is None:
        raise ImproperlyConfigured("no budget cap provider: is the budgets app installed?")
    return _period_caps(periods)
