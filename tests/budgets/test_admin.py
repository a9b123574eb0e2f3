"""Finance staff in the admin: set a cap, acknowledge a pause (through the budget services)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth.models import Group, User

from audit.models import AuditEntry
from budgets.models import BudgetCap, BudgetEvent, BudgetPeriodState
from tests.invoicing.conftest import T0

pytestmark = pytest.mark.django_db


@pytest.fixture
def finance_client(client):
    user = User.objects.create_user("fin", password="pw-finance-1", is_staff=True)
    user.groups.add(Group.objects.get(name="Finance"))
    client.force_login(user)
    return client


def test_set_a_cap_and_acknowledge_a_pause(finance_client, subscribed, record):
    with time_machine.travel(T0 + timedelta(minutes=30), tick=False):
        record(
            [
                {
                    "event_id": f"t{i}",
                    "customer_id": "acme",
                    "meter": "agent_tasks",
                    "timestamp": (T0 + timedelta(minutes=1)).isoformat(),
                }
                for i in range(3)
            ],
            now=T0 + timedelta(minutes=30),
        )
        bad = finance_client.post(
            "/admin/budgets/budgetcap/add/",
            {
                "customer": subscribed.pk,
                "cap_minor": "0",
                "thresholds": "[50, 80, 100]",
                "action": "pause",
            },
        )
        assert bad.status_code == 200 and not BudgetCap.objects.exists()
        response = finance_client.post(
            "/admin/budgets/budgetcap/add/",
            {
                "customer": subscribed.pk,
                "cap_minor": "100",
                "thresholds": "[50, 80, 100]",
                "action": "pause",
            },
        )
        assert response.status_code == 302
        state = BudgetPeriodState.objects.get(customer=subscribed)
        assert state.status == "paused"  # the 500 minimum of the example plan is spend
        assert AuditEntry.objects.filter(action="budget.cap_changed", actor="fin").exists()
        response = finance_client.post(
            "/admin/budgets/budgetperiodstate/",
            {"action": "acknowledge", "_selected_action": [state.pk]},
        )
        assert response.status_code == 302
        state.refresh_from_db()
        assert state.status != "paused" and state.acknowledged_by == "fin"
        assert AuditEntry.objects.filter(action="budget.acknowledged", actor="fin").exists()


def test_finance_sees_pauses_and_resumes_with_who_did_them(finance_client, subscribed, record):
    with time_machine.travel(T0 + timedelta(minutes=30), tick=False):
        finance_client.post(
            "/admin/budgets/budgetcap/add/",
            {
                "customer": subscribed.pk,
                "cap_minor": "100",
                "thresholds": "[50, 80, 100]",
                "action": "pause",
            },
        )  # the 500 minimum is already past it: paused by fin
        state = BudgetPeriodState.objects.get(customer=subscribed)
        finance_client.post(
            "/admin/budgets/budgetperiodstate/",
            {"action": "acknowledge", "_selected_action": [state.pk]},
        )

        page = finance_client.get("/admin/budgets/budgetevent/")

    assert page.status_code == 200
    assert list(
        BudgetEvent.objects.order_by("pk").values_list("kind", "cause", "actor", "cap_minor")
    ) == [
        ("paused", "cap_changed", "fin", 100),
        ("resumed", "acknowledged", "fin", 100),
    ]
    assert page.content.decode().count('<td class="field-actor">fin</td>') == 2
    assert finance_client.get("/admin/budgets/budgetevent/add/").status_code == 403
