"""Fixtures for budgets: those of notifications (a frozen clock, the tasks-only hourly plan,
events, the budget and acknowledgement requests through the API, the operator's endpoint),
shared because budget checks tell people through notifications' outbox."""

from tests.notifications.conftest import (  # noqa: F401
    EVENTS_URL,
    NOW,
    OPS_EMAILS,
    T0,
    _ops_emails,
    acknowledge,
    clock,
    hourly_plan,
    on_tasks_plan,
    operator_endpoint,
    post_tasks,
    put_budget,
    record,
    subscribed,
    task_event,
    tasks_plan,
)
