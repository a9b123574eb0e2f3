"""The budget endpoints: PUT/GET the cap, the allowance, acknowledging; field errors and scope."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from audit.models import AuditEntry
from budgets.models import BudgetAlert, BudgetCap, BudgetPeriodState
from metering import services as metering_services
from notifications.models import Notification
from tests.invoicing.conftest import T0

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clock")]
BUDGET = "/api/v1/customers/acme/budget"
ALLOWANCE = "/api/v1/customers/acme/allowance"
ACKNOWLEDGE = "/api/v1/customers/acme/budget/acknowledge"
PERIOD = {"period_start": "2026-11-02T10:00:00Z", "period_end": "2026-11-02T11:00:00Z"}


def put(client, body, url=BUDGET):
    return client.put(url, body, format="json")


def _snapshot() -> tuple:
    """Everything a budget request may write."""
    return (
        list(BudgetCap.objects.values("customer_id", "cap_minor", "thresholds", "action")),
        list(BudgetPeriodState.objects.values()),
        BudgetAlert.objects.count(),
        list(AuditEntry.objects.values_list("action", flat=True)),
        Notification.objects.count(),
    )


def test_put_and_get_the_budget(api, on_tasks_plan, service_key):
    response = put(api, {"cap_minor": 5000, "thresholds": [100, 50, 80], "action": "pause"})

    assert response.status_code == 200, response.content
    expected = {
        "customer_id": "acme",
        "status": "active",
        "currency": "USD",
        "cap_minor": 5000,
        "spent_minor": 0,
        "remaining_minor": 5000,
        **PERIOD,
        "thresholds": [50, 80, 100],
        "action": "pause",
    }
    assert response.json() == expected
    assert api.get(BUDGET).json() == expected
    cap = BudgetCap.objects.get(customer=on_tasks_plan)
    assert (cap.cap_minor, cap.thresholds, cap.action) == (5000, [50, 80, 100], "pause")
    audit = AuditEntry.objects.get(action="budget.cap_changed")
    assert (audit.customer_external_id, audit.data["by"]) == (
        "acme",
        f"api key {service_key[0].prefix}",
    )
    assert audit.data["after"] == {
        "cap_minor": 5000,
        "thresholds": [50, 80, 100],
        "action": "pause",
    }
    # the allowance says the same
    assert api.get(ALLOWANCE).json() == {
        "status": "active",
        "currency": "USD",
        "cap_minor": 5000,
        "spent_minor": 0,
        "remaining_minor": 5000,
        **PERIOD,
    }


def test_defaults_are_50_80_100_and_alert(api, on_tasks_plan):
    response = put(api, {"cap_minor": 700})
    assert response.status_code == 200, response.content
    assert (response.json()["thresholds"], response.json()["action"]) == ([50, 80, 100], "alert")


def test_null_cap_removes_the_cap(api, on_tasks_plan):
    assert put(api, {"cap_minor": 100, "action": "pause"}).status_code == 200

    response = put(api, {"cap_minor": None, "action": "pause"})

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["cap_minor"], body["remaining_minor"]) == ("active", None, None)
    assert BudgetCap.objects.get().cap_minor is None
    assert api.get(ALLOWANCE).json()["cap_minor"] is None
    assert AuditEntry.objects.filter(action="budget.cap_changed").count() == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cap_minor": 0}, "cap_minor"),
        ({"cap_minor": -100}, "cap_minor"),
        ({"cap_minor": "lots"}, "cap_minor"),
        ({"cap_minor": "100"}, "cap_minor"),
        ({"cap_minor": True}, "cap_minor"),
        ({"cap_minor": 1.5}, "cap_minor"),
        ({"cap_minor": 100.0}, "cap_minor"),
        ({"cap_minor": 10**15 + 1}, "cap_minor"),
        ({}, "cap_minor"),
        ({"cap_minor": 100, "thresholds": [0, 50]}, "thresholds"),
        ({"cap_minor": 100, "thresholds": [50, 101]}, "thresholds"),
        ({"cap_minor": 100, "thresholds": [50, 80, 50]}, "thresholds"),
        ({"cap_minor": 100, "thresholds": []}, "thresholds"),
        ({"cap_minor": 100, "thresholds": 50}, "thresholds"),
        ({"cap_minor": 100, "thresholds": "50,80"}, "thresholds"),
        ({"cap_minor": 100, "thresholds": {"50": True}}, "thresholds"),
        ({"cap_minor": 100, "thresholds": [True, 80]}, "thresholds"),
        ({"cap_minor": 100, "thresholds": ["50", 80]}, "thresholds"),
        ({"cap_minor": 100, "thresholds": [50.0, 80]}, "thresholds"),
        ({"cap_minor": 100, "thresholds": list(range(1, 12))}, "thresholds"),
        ({"cap_minor": 100, "action": "stop"}, "action"),
        ({"cap_minor": 100, "action": ""}, "action"),
        ({"cap_minor": 100, "action": None}, "action"),
    ],
)
def test_invalid_budget_is_422_and_changes_nothing(api, on_tasks_plan, body, field):
    assert (
        put(api, {"cap_minor": 300, "thresholds": [50, 100], "action": "pause"}).status_code == 200
    )
    before = _snapshot()

    response = put(api, body)

    assert response.status_code == 422, response.content
    errors = response.json()["errors"]
    assert errors and {e["field"].split(".")[0].split("[")[0] for e in errors} == {field}
    assert _snapshot() == before


def test_key_scoped_to_another_customer_gets_404_and_changes_nothing(
    on_tasks_plan, other_customer, api
):
    assert put(api, {"cap_minor": 100, "action": "pause"}).status_code == 200
    _, plaintext = metering_services.create_api_key(name="globex", customer=other_customer)
    scoped = APIClient()
    scoped.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    before = _snapshot()

    responses = [
        scoped.get(BUDGET),
        put(scoped, {"cap_minor": 10**6, "action": "alert"}),
        scoped.get(ALLOWANCE),
        scoped.post(ACKNOWLEDGE),
        scoped.get("/api/v1/customers/nobody/allowance"),
    ]

    assert [r.status_code for r in responses] == [404] * 5
    assert responses[0].json() == responses[4].json()  # out of scope reads as unknown
    assert _snapshot() == before
    # the customer's own scoped key may
    _, own = metering_services.create_api_key(name="acme", customer=on_tasks_plan)
    mine = APIClient()
    mine.credentials(HTTP_AUTHORIZATION=f"Bearer {own}")
    assert mine.get(BUDGET).json()["cap_minor"] == 100


def test_acknowledge_when_nothing_is_paused_is_409_and_changes_nothing(api, on_tasks_plan):
    assert put(api, {"cap_minor": 100, "action": "pause"}).status_code == 200
    before = _snapshot()

    first = api.post(ACKNOWLEDGE)
    second = api.post(ACKNOWLEDGE)

    assert [first.status_code, second.status_code] == [409, 409]
    assert first.json() == {
        "errors": [{"index": None, "field": None, "message": "nothing is paused"}]
    }
    assert _snapshot() == before
    assert BudgetPeriodState.objects.get().acknowledged_at is None


def test_allowance_without_a_cap_or_a_plan(api, customer, meters):
    response = api.get(ALLOWANCE)
    assert response.status_code == 200
    assert response.json() == {
        "status": "active",
        "currency": "USD",
        "cap_minor": None,
        "spent_minor": 0,
        "remaining_minor": None,
        "period_start": None,
        "period_end": None,
    }
    assert api.post(ACKNOWLEDGE).status_code == 409


def test_period_boundaries_are_the_customers_hour(api, on_tasks_plan, clock):
    put(api, {"cap_minor": 100})
    clock.move_to(T0.replace(hour=11, minute=59))
    body = api.get(ALLOWANCE).json()
    assert (body["period_start"], body["period_end"]) == (
        "2026-11-02T11:00:00Z",
        "2026-11-02T12:00:00Z",
    )
