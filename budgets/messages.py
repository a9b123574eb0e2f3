"""What a budget check tells whom: the customer's threshold e-mails, finance's pause notice and
the agent platform's events, queued in notifications' outbox (sent after commit, once by key).
"""

from __future__ import annotations

from django.conf import settings

from budgets.models import BudgetEvent
from budgets.selectors import BudgetStatus
from metering.currencies import format_minor
from notifications.models import Notification
from notifications.services import queue_notification, queue_operator_webhook


def queue_budget_messages(status: BudgetStatus) -> None:
    """Queue the e-mails and operator webhooks for new alerts and pause/resume transitions.

    Each threshold crossed is one message, except that the thresholds a new cap finds crossed
    at once make one message (naming the highest and listing them)."""
    customer = status.customer
    period = status.period_start.isoformat() if status.period_start else ""
    base = {
        "customer_id": customer.external_id,
        "customer_name": customer.name,
        "currency": status.currency,
        "cap": format_minor(status.cap_minor or 0, status.currency),
        "cap_minor": status.cap_minor,
        "spent": format_minor(status.spent_minor, status.currency),
        "spent_minor": status.spent_minor,
        "remaining_minor": status.remaining_minor,
        "status": status.status,
        "action": status.action,
        "acknowledged": status.acknowledged,
        "period_start": period,
        "period_end": status.period_end.isoformat() if status.period_end else "",
        "portal_url": settings.PORTAL_BASE_URL.rstrip("/") + "/portal/budget/",
    }
    alerts = sorted(status.new_alerts, key=lambda alert: alert.threshold)
    if status.cause == BudgetEvent.Cause.CAP_CHANGED and alerts:
        groups = [alerts]
    else:
        groups = [[alert] for alert in alerts]
    for group in groups:
        top = group[-1]  # the highest threshold of the group keys its message
        thresholds = [alert.threshold for alert in group]
        context = {
            **base,
            "threshold": top.threshold,
            "thresholds": thresholds,
            "thresholds_text": _percentages(thresholds),
        }
        queue_notification(
            key=f"budget-alert:{top.pk}",
            kind=Notification.Kind.BUDGET_ALERT,
            recipients=list(customer.emails),
            subject=f"{top.threshold}% of your budget used ({base['spent']} of {base['cap']})",
            context=context,
            customer=customer,
            period_start=status.period_start,
        )
        queue_operator_webhook(
            key=f"threshold:{top.pk}",
            event="budget.threshold_crossed",
            customer=customer,
            payload=context,
        )
    if status.transition == "paused":
        count = status.pause_count
        queue_notification(
            key=f"ops-paused:{customer.pk}:{period}:{count}",
            kind=Notification.Kind.OPS_PAUSED,
            recipients=list(settings.BILLING_OPS_EMAILS),
            subject=f"Customer {customer.external_id} paused at its budget cap",
            context=base,
            customer=customer,
            period_start=status.period_start,
        )
        queue_operator_webhook(
            key=f"paused:{customer.pk}:{period}:{count}",
            event="budget.paused",
            customer=customer,
            payload=base,
        )
    elif status.transition == "resumed":
        queue_operator_webhook(
            key=f"resumed:{customer.pk}:{period}:{status.resume_count}",
            event="budget.resumed",
            customer=customer,
            payload=base,
        )


def _percentages(values: list[int]) -> str:
    """[50, 80, 100] -> "50%, 80% and 100%"."""
    texts = [f"{value}%" for value in values]
    return texts[0] if len(texts) == 1 else f"{', '.join(texts[:-1])} and {texts[-1]}"
