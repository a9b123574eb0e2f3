"""Budget caps as usage arrives: each threshold alerts once and in order, the cap pauses, usage
beyond it is still recorded, and the customer resumes by raising the cap or acknowledging."""

from __future__ import annotations

from datetime import timedelta

import pytest

from audit.models import AuditEntry
from budgets import tasks
from budgets.models import BudgetAlert, BudgetPeriodState
from invoicing import selectors
from invoicing.models import BillingPeriod
from metering.models import Customer, UsageEvent
from tests.budgets.conftest import NOW, OPS_EMAILS, task_event
from tests.invoicing.conftest import T0

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clock")]
ALLOWANCE = "/api/v1/customers/acme/allowance"
CUSTOMER_EMAILS = ["billing@acme.example"]
SUBJECTS = {
    50: "50% of your budget used ($0.50 of $1.00)",
    80: "80% of your budget used ($0.80 of $1.00)",
    100: "100% of your budget used ($1.00 of $1.00)",
}
PAUSED_SUBJECT = "Customer acme paused at its budget cap"


def expected_status(spent: int, cap: int = 100) -> dict:
    """What the ingestion response says for acme at `spent` of a 50/80/100 `pause` cap."""
    status = "active" if spent * 2 < cap else "warning" if spent < cap else "paused"
    return {"acme": {"status": status, "remaining_minor": max(cap - spent, 0)}}


def subjects(mailoutbox, to) -> list[str]:
    return [m.subject for m in mailoutbox if m.to == to]


def audit_actions(prefix: str = "budget.") -> list[str]:
    return list(
        AuditEntry.objects.filter(action__startswith=prefix)
        .order_by("pk")
        .values_list("action", flat=True)
    )


@pytest.fixture
def capped(on_tasks_plan, put_budget):
    """acme on the tasks-only plan with a cap of 100 minor units (20 tasks), pause at the cap."""
    body = put_budget(cap_minor=100, thresholds=[50, 80, 100], action="pause")
    assert (body["status"], body["remaining_minor"]) == ("active", 100)
    return on_tasks_plan


@pytest.fixture
def paused(capped, post_tasks, mailoutbox):
    """acme paused at its cap: 20 tasks posted, three alerts and one finance e-mail sent."""
    assert post_tasks(20)[-1]["customers"] == expected_status(100)
    assert len(mailoutbox) == 4
    return capped


def test_thresholds_alert_in_order_and_the_cap_pauses(
    capped, post_tasks, mailoutbox, api, django_capture_on_commit_callbacks
):
    period = BillingPeriod.objects.get(customer=capped, start=T0)
    mails_after: dict[int, list[str]] = {}
    for n in range(1, 26):
        (body,) = post_tasks(1)
        assert (body["accepted"], body["events"][0]["status"]) == (1, "accepted")
        assert body["customers"] == expected_status(5 * n), n
        mails_after[n] = [m.subject for m in mailoutbox]
        # the allowance says the same, and spends what the invoice's rating says
        allowance = api.get(ALLOWANCE).json()
        assert {k: allowance[k] for k in ("status", "remaining_minor")} == body["customers"]["acme"]
        assert allowance["spent_minor"] == 5 * n
        assert selectors.preview_period_usage(period=period).total_minor == 5 * n

    # each threshold e-mailed once, as it was crossed, in order; finance told once of the pause
    assert mails_after[9] == []
    assert mails_after[10] == [SUBJECTS[50]]
    assert mails_after[15] == [SUBJECTS[50]]
    assert mails_after[16] == [SUBJECTS[50], SUBJECTS[80]]
    assert mails_after[19] == [SUBJECTS[50], SUBJECTS[80]]
    assert mails_after[20] == [SUBJECTS[50], SUBJECTS[80], SUBJECTS[100], PAUSED_SUBJECT]
    assert mails_after[25] == mails_after[20]
    assert subjects(mailoutbox, CUSTOMER_EMAILS) == [SUBJECTS[50], SUBJECTS[80], SUBJECTS[100]]
    assert subjects(mailoutbox, OPS_EMAILS) == [PAUSED_SUBJECT]
    assert all(m.alternatives[0][1] == "text/html" for m in mailoutbox)
    assert "At 100% your agents will be paused" in mailoutbox[0].body
    assert "Your agents are paused until you raise the cap" in mailoutbox[2].body
    assert "$1.00 of $1.00" in mailoutbox[3].body

    alerts = BudgetAlert.objects.order_by("threshold").values_list(
        "threshold", "cap_minor", "spent_minor"
    )
    assert list(alerts) == [(50, 100, 50), (80, 100, 80), (100, 100, 100)]
    assert audit_actions() == ["budget.cap_changed", "budget.paused"]
    assert Customer.objects.get(external_id="acme").status == "paused"

    # usage beyond the cap is recorded, and the allowance agrees with the ingestion response
    # and with the rating the invoice will use
    assert UsageEvent.objects.filter(customer=capped).count() == 25
    allowance = api.get(ALLOWANCE)
    assert allowance.json() == {
        "status": "paused",
        "currency": "USD",
        "cap_minor": 100,
        "spent_minor": 125,
        "remaining_minor": 0,
        "period_start": "2026-11-02T10:00:00Z",
        "period_end": "2026-11-02T11:00:00Z",
    }
    assert selectors.preview_period_usage(period=period).total_minor == 125
    assert api.get("/api/v1/customers/acme/usage").json()["total_minor"] == 125
    # reading the budget or the allowance again, or the beat check, tells nobody anything
    with django_capture_on_commit_callbacks(execute=True) as queued:
        api.get(ALLOWANCE)
        api.get("/api/v1/customers/acme/budget")
        tasks.check_budgets()
    assert queued == []
    assert len(mailoutbox) == 4 and BudgetAlert.objects.count() == 3
    assert audit_actions() == ["budget.cap_changed", "budget.paused"]


def test_a_batch_crossing_several_thresholds_alerts_each_once(
    capped, api, mailoutbox, django_capture_on_commit_callbacks
):
    events = [task_event(f"batch-{i}") for i in range(17)]  # 85: past 50 and 80 at once
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/v1/events", {"events": events}, format="json")
    with django_capture_on_commit_callbacks(execute=True):
        again = api.post("/api/v1/events", {"events": events}, format="json")

    assert response.status_code == 202 and again.status_code == 202
    assert response.json()["customers"] == again.json()["customers"] == expected_status(85)
    assert again.json()["duplicates"] == 17
    assert sorted(BudgetAlert.objects.values_list("threshold", flat=True)) == [50, 80]
    assert subjects(mailoutbox, CUSTOMER_EMAILS) == [
        "50% of your budget used ($0.85 of $1.00)",
        "80% of your budget used ($0.85 of $1.00)",
    ]


def test_alert_action_warns_but_never_pauses(on_tasks_plan, put_budget, post_tasks, mailoutbox):
    put_budget(cap_minor=100, action="alert")

    bodies = post_tasks(30)

    assert [b["customers"]["acme"]["status"] for b in bodies[18:22]] == ["warning"] * 4
    assert bodies[-1]["customers"] == {"acme": {"status": "warning", "remaining_minor": 0}}
    assert subjects(mailoutbox, CUSTOMER_EMAILS) == [SUBJECTS[50], SUBJECTS[80], SUBJECTS[100]]
    assert subjects(mailoutbox, OPS_EMAILS) == []
    assert audit_actions() == ["budget.cap_changed"]
    assert Customer.objects.get(external_id="acme").status == "active"


def test_customers_without_a_cap_read_active(on_tasks_plan, post_tasks, mailoutbox):
    assert post_tasks(3)[-1]["customers"] == {"acme": {"status": "active", "remaining_minor": None}}
    assert mailoutbox == [] and not BudgetPeriodState.objects.filter(status="paused").exists()


def test_resume_by_raising_the_cap(paused, put_budget, post_tasks, mailoutbox, api):
    body = put_budget(cap_minor=200, thresholds=[50, 80, 100], action="pause")

    assert (body["status"], body["cap_minor"], body["spent_minor"], body["remaining_minor"]) == (
        "warning",
        200,
        100,
        100,
    )
    assert api.get(ALLOWANCE).json()["status"] == "warning"
    assert Customer.objects.get(external_id="acme").status == "active"
    assert audit_actions() == [
        "budget.cap_changed",
        "budget.paused",
        "budget.cap_changed",
        "budget.resumed",
    ]
    change = AuditEntry.objects.filter(action="budget.cap_changed").latest("pk")
    assert (change.data["before"]["cap_minor"], change.data["after"]["cap_minor"]) == (100, 200)
    state = BudgetPeriodState.objects.get()
    assert (state.status, state.pause_count, state.resume_count) == ("warning", 1, 1)
    # raising the cap re-arms the thresholds of the new cap: 100 of 200 is its 50% mark
    assert len(mailoutbox) == 5
    assert mailoutbox[-1].subject == "50% of your budget used ($1.00 of $2.00)"

    # usage goes on, up to the new cap, where it pauses again (finance is told again)
    bodies = post_tasks(20)
    assert bodies[0]["customers"] == expected_status(105, cap=200)
    assert bodies[-1]["customers"] == expected_status(200, cap=200)
    assert subjects(mailoutbox, OPS_EMAILS) == [PAUSED_SUBJECT, PAUSED_SUBJECT]
    assert audit_actions()[-1] == "budget.paused"
    state.refresh_from_db()
    assert (state.status, state.pause_count) == ("paused", 2)


def test_removing_the_cap_resumes(paused, put_budget, post_tasks, api):
    body = put_budget(cap_minor=None, action="pause")

    assert (body["status"], body["cap_minor"], body["remaining_minor"]) == ("active", None, None)
    assert audit_actions()[-2:] == ["budget.cap_changed", "budget.resumed"]
    assert post_tasks(1)[0]["customers"] == {"acme": {"status": "active", "remaining_minor": None}}
    assert Customer.objects.get(external_id="acme").status == "active"


def test_resume_by_acknowledging(paused, acknowledge, post_tasks, mailoutbox, api, service_key):
    response = acknowledge()

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["cap_minor"], body["spent_minor"], body["remaining_minor"]) == (
        "warning",
        100,
        100,
        0,
    )
    assert audit_actions() == [
        "budget.cap_changed",
        "budget.paused",
        "budget.acknowledged",
        "budget.resumed",
    ]
    ack = AuditEntry.objects.get(action="budget.acknowledged")
    assert ack.data["by"] == f"api key {service_key[0].prefix}"
    state = BudgetPeriodState.objects.get()
    assert (state.status, state.acknowledged_at) == ("warning", NOW)
    assert Customer.objects.get(external_id="acme").status == "active"

    # further usage in the period does not pause again, and tells nobody again
    bodies = post_tasks(10)
    assert {b["customers"]["acme"]["status"] for b in bodies} == {"warning"}
    assert bodies[-1]["customers"]["acme"]["remaining_minor"] == 0
    assert api.get(ALLOWANCE).json()["status"] == "warning"
    assert len(mailoutbox) == 4
    assert audit_actions()[-1] == "budget.resumed"
    # nothing is paused any more
    assert acknowledge().status_code == 409
    assert AuditEntry.objects.filter(action="budget.acknowledged").count() == 1


def test_a_new_period_starts_active_again(
    paused, api, clock, mailoutbox, django_capture_on_commit_callbacks
):
    clock.move_to(T0 + timedelta(hours=1, minutes=5))

    for _ in range(2):  # two beat runs
        with django_capture_on_commit_callbacks(execute=True):
            tasks.check_budgets()

    assert Customer.objects.get(external_id="acme").status == "active"
    body = api.get(ALLOWANCE).json()
    assert (body["status"], body["spent_minor"], body["period_start"]) == (
        "active",
        0,
        "2026-11-02T11:00:00Z",
    )
    assert audit_actions() == ["budget.cap_changed", "budget.paused", "budget.resumed"]
    resumed = AuditEntry.objects.get(action="budget.resumed")
    assert resumed.data["period_start"] == "2026-11-02T11:00:00Z"
    assert len(mailoutbox) == 4  # a new period is not e-mailed about
