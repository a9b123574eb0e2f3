"""The reads read only: GET /allowance, GET /budget, GET /usage, the portal's dashboard, the
breakdown it loads and the budget page take no lock, write nothing, pause or resume nobody and
queue no message -- for a customer past its thresholds and its cap whose usage no check has
seen yet, and for one paused in a period that has ended. They answer what the next check will
record; the state changes where usage arrives, in the beat check and in explicit actions."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEntry
from budgets import tasks
from budgets.models import BudgetAlert, BudgetPeriodState
from invoicing.models import BillingPeriod
from metering.models import Customer, PortalMembership
from notifications.models import Notification, OperatorWebhook
from tests.budgets.conftest import NOW, T0, task_event

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clock")]
ALLOWANCE = "/api/v1/customers/acme/allowance"
BUDGET = "/api/v1/customers/acme/budget"
USAGE = "/api/v1/customers/acme/usage"
PORTAL_PAGES = ["/portal/", "/portal/breakdown/?fragment=1", "/portal/budget/"]
# Statements that write or lock: DML, row locks, advisory locks.
WRITES = re.compile(
    r"^\s*(INSERT|UPDATE|DELETE|MERGE|TRUNCATE)\b|\bFOR (NO KEY )?UPDATE\b|\bFOR (KEY )?SHARE\b"
    r"|pg_advisory",
    re.IGNORECASE,
)


@pytest.fixture
def portal(client, on_tasks_plan):
    """acme's portal login."""
    user = User.objects.create_user("acme-user", password="pw-acme-1")
    PortalMembership.objects.create(user=user, customer=on_tasks_plan)
    client.force_login(user)
    return client


@pytest.fixture
def unchecked(on_tasks_plan, put_budget, record):
    """acme with a cap of 100 minor units (50/80/100, pause) and 25 tasks (125) recorded
    through the ingestion service alone: no budget check has seen them, so a check would
    record three alerts and a pause."""
    put_budget(cap_minor=100, thresholds=[50, 80, 100], action="pause")
    record([task_event(f"t{i}") for i in range(25)], now=NOW)
    return on_tasks_plan


def _snapshot() -> tuple:
    """Everything a budget check, a period roll or a message could write."""
    return (
        list(BudgetPeriodState.objects.order_by("pk").values()),
        list(BudgetAlert.objects.order_by("pk").values()),
        list(Customer.objects.order_by("pk").values("pk", "status", "updated_at")),
        list(BillingPeriod.objects.order_by("pk").values("pk", "start", "status")),
        list(AuditEntry.objects.order_by("pk").values_list("action", flat=True)),
        Notification.objects.count(),
        OperatorWebhook.objects.count(),
    )


def _read_everything(api, portal, django_capture_on_commit_callbacks) -> list:
    """Every read, twice; asserts that none wrote, locked or queued anything."""
    responses = []
    for _ in range(2):
        with (
            CaptureQueriesContext(connection) as queries,
            django_capture_on_commit_callbacks() as queued,
        ):
            responses = [api.get(ALLOWANCE), api.get(BUDGET), api.get(USAGE)]
            responses += [portal.get(page) for page in PORTAL_PAGES]
        assert [r.status_code for r in responses] == [200] * 6
        assert [q["sql"] for q in queries if WRITES.search(q["sql"])] == []
        assert queued == []
    return responses


@pytest.mark.usefixtures("operator_endpoint")
def test_reads_of_a_customer_past_its_cap_write_nothing(
    unchecked, api, portal, django_capture_on_commit_callbacks, mailoutbox
):
    before = _snapshot()
    mails = len(mailoutbox)

    allowance, budget, usage, dashboard, _, budget_page = _read_everything(
        api, portal, django_capture_on_commit_callbacks
    )

    assert _snapshot() == before
    assert len(mailoutbox) == mails == 0
    # ...and they say what the next check will record
    assert allowance.json() == {
        "status": "paused",
        "currency": "USD",
        "cap_minor": 100,
        "spent_minor": 125,
        "remaining_minor": 0,
        "period_start": "2026-11-02T10:00:00Z",
        "period_end": "2026-11-02T11:00:00Z",
    }
    assert (budget.json()["status"], budget.json()["thresholds"]) == ("paused", [50, 80, 100])
    assert usage.json()["total_minor"] == 125
    assert 'data-budget-status="paused"' in dashboard.content.decode()
    assert budget_page.context["alerts"] == []

    # the beat check records it, once
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            tasks.check_budgets()
    assert sorted(BudgetAlert.objects.values_list("threshold", "spent_minor")) == [
        (50, 125),
        (80, 125),
        (100, 125),
    ]
    assert BudgetPeriodState.objects.get().status == "paused"
    assert Customer.objects.get(pk=unchecked.pk).status == "paused"
    assert Notification.objects.count() == 4  # three alerts and finance's pause notice
    assert OperatorWebhook.objects.count() == 4
    assert AuditEntry.objects.filter(action="budget.paused").count() == 1
    assert api.get(ALLOWANCE).json() == allowance.json()


def test_reads_in_a_period_beat_has_not_opened_write_nothing(
    on_tasks_plan, put_budget, post_tasks, api, portal, clock, django_capture_on_commit_callbacks
):
    """Paused in the first hour; in the next one, before beat has run: the reads see the new
    period (active, nothing spent) without creating its row or resuming the customer."""
    put_budget(cap_minor=100, thresholds=[50, 80, 100], action="pause")
    post_tasks(20)
    assert Customer.objects.get(pk=on_tasks_plan.pk).status == "paused"
    clock.move_to(T0 + timedelta(hours=1, minutes=5))
    before = _snapshot()
    assert not BillingPeriod.objects.filter(start=T0 + timedelta(hours=1)).exists()

    allowance, budget, usage, dashboard, _, _ = _read_everything(
        api, portal, django_capture_on_commit_callbacks
    )

    assert _snapshot() == before
    assert Customer.objects.get(pk=on_tasks_plan.pk).status == "paused"
    assert allowance.json() == {
        "status": "active",
        "currency": "USD",
        "cap_minor": 100,
        "spent_minor": 0,
        "remaining_minor": 100,
        "period_start": "2026-11-02T11:00:00Z",
        "period_end": "2026-11-02T12:00:00Z",
    }
    assert (usage.json()["period_start"], usage.json()["total_minor"]) == (
        "2026-11-02T11:00:00Z",
        0,
    )
    assert (budget.json()["status"], budget.json()["period_start"]) == (
        "active",
        "2026-11-02T11:00:00Z",
    )
    assert 'data-budget-status="active"' in dashboard.content.decode()

    # the beat check opens the period and resumes the customer
    with django_capture_on_commit_callbacks(execute=True):
        tasks.check_budgets()
    assert BillingPeriod.objects.filter(start=T0 + timedelta(hours=1)).count() == 1
    assert Customer.objects.get(pk=on_tasks_plan.pk).status == "active"
    assert AuditEntry.objects.filter(action="budget.resumed").count() == 1
