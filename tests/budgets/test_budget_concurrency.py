"""200 events posted at once across the cap, on real PostgreSQL with real threads: each threshold
alerts exactly once and the customer pauses exactly once.

transaction=True: every request commits for real, so the budget checks race for real, and what
they queue on commit (e-mails, operator webhooks) runs at once in the request's thread (eager
Celery), just as a worker would pick it up after the commit.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from rest_framework.test import APIClient

from audit.models import AuditEntry
from budgets.models import BudgetAlert, BudgetPeriodState
from metering.models import Customer, UsageEvent
from notifications.models import Notification, OperatorWebhook
from tests.budgets.conftest import EVENTS_URL, OPS_EMAILS, task_event

THREADS = 20
REQUESTS_PER_THREAD = 10  # 200 events of 5 minor units: 1000, twice the cap
CAP = 500


def _classify(remaining: int) -> str:
    """The status a response must carry for what it says remains of the 500 cap."""
    if remaining == 0:
        return "paused"
    return "warning" if remaining <= CAP // 2 else "active"


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("clock")
def test_concurrent_events_across_the_cap_alert_and_pause_exactly_once(
    on_tasks_plan, service_key, operator_endpoint, mailoutbox
):
    setup = APIClient()
    setup.credentials(HTTP_AUTHORIZATION=f"Bearer {service_key[1]}")
    response = setup.put(
        "/api/v1/customers/acme/budget",
        {"cap_minor": CAP, "thresholds": [50, 80, 100], "action": "pause"},
        format="json",
    )
    assert response.status_code == 200, response.content
    barrier = threading.Barrier(THREADS, timeout=30)
    results: list[list[tuple[int, dict]]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []

    def agent(index: int) -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {service_key[1]}")
        try:
            barrier.wait()
            for n in range(REQUESTS_PER_THREAD):
                event = task_event(f"agent-{index}-{n}")
                response = client.post(EVENTS_URL, event, format="json")
                results[index].append((response.status_code, response.json()))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    responses = [body for per_thread in results for status, body in per_thread]
    assert len(responses) == THREADS * REQUESTS_PER_THREAD
    assert {status for per_thread in results for status, _ in per_thread} == {202}
    assert all(body["accepted"] == 1 for body in responses)
    # every response's status agrees with the remaining amount it reports, and some saw the
    # customer paused (after the 100th event no check can see less than the cap)
    statuses = [body["customers"]["acme"] for body in responses]
    assert all(s["status"] == _classify(s["remaining_minor"]) for s in statuses)
    assert sum(s["status"] == "paused" for s in statuses) >= 100
    # each thread saw its own spend grow: remaining never goes up within a thread
    for per_thread in results:
        remaining = [body["customers"]["acme"]["remaining_minor"] for _, body in per_thread]
        assert remaining == sorted(remaining, reverse=True)

    # every event stored, beyond the cap too
    assert UsageEvent.objects.filter(customer=on_tasks_plan).count() == 200
    # each threshold alerted exactly once, the pause happened exactly once
    alerts = list(BudgetAlert.objects.order_by("threshold").values_list("threshold", "cap_minor"))
    assert alerts == [(50, CAP), (80, CAP), (100, CAP)]
    assert AuditEntry.objects.filter(action="budget.paused").count() == 1
    assert not AuditEntry.objects.filter(action="budget.resumed").exists()
    state = BudgetPeriodState.objects.get()
    # the state records the spend of its last change (the pause: at or past the cap); checks
    # that change nothing are reads, so the live spend is the allowance's, asserted below
    assert (state.status, state.pause_count) == ("paused", 1)
    assert 500 <= state.spent_minor <= 1000
    assert Customer.objects.get(pk=on_tasks_plan.pk).status == "paused"
    # told exactly once each: three alert e-mails, one to finance, four webhooks
    sent = Notification.objects.filter(status="sent")
    assert Notification.objects.count() == sent.count() == 4
    assert sorted(n.context["threshold"] for n in sent.filter(kind="budget_alert")) == [50, 80, 100]
    assert sent.filter(kind="ops_paused").count() == 1
    customer_mails = [m for m in mailoutbox if m.to == ["billing@acme.example"]]
    assert sorted(int(m.subject.split("%")[0]) for m in customer_mails) == [50, 80, 100]
    assert [m.subject for m in mailoutbox if m.to == OPS_EMAILS] == [
        "Customer acme paused at its budget cap"
    ]
    assert len(mailoutbox) == 4
    hooks = sorted(OperatorWebhook.objects.values_list("event", "status"))
    assert (
        hooks == [("budget.paused", "delivered")] + [("budget.threshold_crossed", "delivered")] * 3
    )
    assert (
        sorted(r.headers["x-billing-event"] for r in operator_endpoint.requests)
        == ["budget.paused"] + ["budget.threshold_crossed"] * 3
    )
    # the allowance agrees
    allowance = setup.get("/api/v1/customers/acme/allowance").json()
    assert (allowance["status"], allowance["spent_minor"], allowance["remaining_minor"]) == (
        "paused",
        1000,
        0,
    )
