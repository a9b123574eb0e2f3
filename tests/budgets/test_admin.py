"""Finance staff in the admin: set a cap, acknowledge a pause (through the budget services)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth.models import Group, User

from audit.models import AuditEntry
from budgets.models import BudgetCap, BudgetPeriodState
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
