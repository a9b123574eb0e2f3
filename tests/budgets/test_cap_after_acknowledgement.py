"""A cap that holds after an acknowledgement (issue 13, item 7).

An acknowledgement covers the cap it acknowledged, not a later one: a new, raised, lowered or
restored cap re-arms the pause and the cap credit from that moment (what was spent under the
acknowledgement stays billed). Pauses and resumes are in the customer's history and the audit
log with the key or user that did them. A new cap that finds several thresholds crossed sends
one message.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User

from audit.models import AuditEntry
from budgets import tasks
from budgets.models import BudgetAlert, BudgetEvent, BudgetPeriodState
from invoicing.models import Invoice
from invoicing.pricing import describe_line_price
from invoicing.rating import PriceSpec
from invoicing.services import closing, plans, subscriptions
from invoicing.services.reconcile import reconcile
from metering.models import Customer, PortalMembership
from notifications.models import Notification, OperatorWebhook
from tests.budgets.conftest import EVENTS_URL, T0, task_event

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clock")]
BUDGET = "/api/v1/customers/acme/budget"
ALLOWANCE = "/api/v1/customers/acme/allowance"
ACKNOWLEDGE = "/api/v1/customers/acme/budget/acknowledge"
CUSTOMER_EMAILS = ["billing@acme.example"]
PAUSED_SUBJECT = "Customer acme paused at its budget cap"
M = timedelta(minutes=1)


@pytest.fixture(autouse=True)
def _grace(settings):
    settings.BILLING_GRACE_PERIOD = 600
    settings.BILLING_REVIEW_PERIOD = 0


@pytest.fixture
def cents_plan(customer, meters):
    """acme on an hourly plan where one llm_tokens unit costs one cent: spend in minor units is
    the sum of the quantities posted."""
    plan = plans.create_plan_version(
        code="cents",
        name="Cents",
        currency="USD",
        interval="hour",
        prices=[
            plans.PriceInput(
                "llm_tokens", PriceSpec(model="per_unit", unit_amount_minor=Decimal(1))
            )
        ],
    )
    subscriptions.subscribe_customer(customer=customer, plan=plan, now=T0)
    return customer


@pytest.fixture
def post_cents(api, django_capture_on_commit_callbacks):
    """POST one llm_tokens event of `cents` units (as many cents); the ingestion response."""
    counter = {"n": 0}

    def _post(cents: int) -> dict:
        counter["n"] += 1
        event = {
            "event_id": f"tokens-{counter['n']}",
            "customer_id": "acme",
            "meter": "llm_tokens",
            "quantity": cents,
            "timestamp": (T0 + 5 * M).isoformat(),
        }
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post(EVENTS_URL, event, format="json")
        assert response.status_code == 202, response.content
        return response.json()["customers"]["acme"]

    return _post


@pytest.fixture
def acme_portal(client, customer):
    user = User.objects.create_user("acme-user", password="pw-acme-1")
    PortalMembership.objects.create(user=user, customer=customer)
    client.force_login(user)
    return client


def key_label(service_key) -> str:
    return f"api key {service_key[0].prefix}"


def customer_subjects(mailoutbox) -> list[str]:
    return [m.subject for m in mailoutbox if m.to == CUSTOMER_EMAILS]


def audit(action: str) -> list[tuple[str, dict]]:
    entries = AuditEntry.objects.filter(action=action).order_by("pk")
    return [(entry.actor, entry.data) for entry in entries]


def events() -> list[tuple[str, str, str, int, int | None]]:
    return list(
        BudgetEvent.objects.order_by("pk").values_list(
            "kind", "cause", "actor", "spent_minor", "cap_minor"
        )
    )


def close_first_hour(clock) -> Invoice:
    at = T0 + timedelta(hours=1, minutes=10)
    clock.move_to(at)
    closing.close_due_periods(now=at)
    return Invoice.objects.get(period__start=T0)


def test_the_story_paused_acknowledged_new_cap_pauses_again_and_is_credited(
    cents_plan,
    api,
    put_budget,
    acknowledge,
    post_cents,
    acme_portal,
    service_key,
    clock,
    mailoutbox,
):
    """acme, paused at its $30 cap, acknowledges through the API, spends on to $74.87, sets a
    new cap of $45 with `pause`: it is paused again at once, told so in one message, the
    portal says so, and the hour is billed what was acknowledged ($74.87), the $7.56 that
    arrived after the new cap being credited."""
    key = key_label(service_key)
    put_budget(cap_minor=3000, thresholds=[50, 80, 100], action="pause")
    assert post_cents(1500) == {"status": "warning", "remaining_minor": 1500}
    assert post_cents(900) == {"status": "warning", "remaining_minor": 600}
    assert post_cents(612) == {"status": "paused", "remaining_minor": 0}  # 3012

    acknowledged = acknowledge()
    assert acknowledged.status_code == 200, acknowledged.content
    assert (acknowledged.json()["status"], acknowledged.json()["spent_minor"]) == ("warning", 3012)
    assert post_cents(4475) == {"status": "warning", "remaining_minor": 0}  # 7487, acknowledged
    mails_before = len(mailoutbox)

    body = put_budget(cap_minor=4500, thresholds=[50, 80, 100], action="pause")

    # paused again at once: the acknowledgement covered the $30 cap, not this one
    assert (body["status"], body["cap_minor"], body["spent_minor"], body["remaining_minor"]) == (
        "paused",
        4500,
        7487,
        0,
    )
    assert Customer.objects.get(pk=cents_plan.pk).status == "paused"
    # one message for the three thresholds the new cap finds crossed, saying it is paused
    new_mails = mailoutbox[mails_before:]
    assert [m.subject for m in new_mails] == [
        "100% of your budget used ($74.87 of $45.00)",
        PAUSED_SUBJECT,
    ]
    alert_mail = new_mails[0]
    assert "50%, 80% and 100% thresholds crossed at once" in alert_mail.body
    assert "Your agents are paused until you raise the cap" in alert_mail.body
    assert "will be paused" not in alert_mail.body
    assert "will be paused" not in alert_mail.alternatives[0][0]
    assert sorted(
        BudgetAlert.objects.filter(cap_minor=4500).values_list("threshold", "spent_minor")
    ) == [(50, 7487), (80, 7487), (100, 7487)]

    # usage still arrives and is recorded; the customer stays paused
    assert post_cents(756) == {"status": "paused", "remaining_minor": 0}  # 8243
    assert api.get(ALLOWANCE).json() == {
        "status": "paused",
        "currency": "USD",
        "cap_minor": 4500,
        "spent_minor": 8243,
        "remaining_minor": 0,
        "period_start": "2026-11-02T10:00:00Z",
        "period_end": "2026-11-02T11:00:00Z",
    }
    dashboard = acme_portal.get("/portal/").content.decode()
    assert 'data-budget-status="paused"' in dashboard
    assert "$82.43 of $45.00 used (183%); agents pause at the cap." in dashboard

    # who did what: every pause and resume by the key, in the history and the audit log
    assert events() == [
        ("paused", "usage", key, 3012, 3000),
        ("resumed", "acknowledged", key, 3012, 3000),
        ("paused", "cap_changed", key, 7487, 4500),
    ]
    assert [actor for actor, _ in audit("budget.paused")] == [key, key]
    assert [(actor, data["cause"]) for actor, data in audit("budget.resumed")] == [
        (key, "acknowledged")
    ]
    ((actor, data),) = audit("budget.acknowledged")
    assert (actor, data["by"], data["cap_minor"]) == (key, key, 3000)
    changes = audit("budget.cap_changed")
    assert [actor for actor, _ in changes] == [key, key]
    assert changes[-1][1]["acknowledgement_ended"] == {
        "acknowledged_cap_minor": 3000,
        "spent_minor": 7487,
    }
    history = acme_portal.get("/portal/budget/").context["history"]
    assert [(e.event, e.cause, e.by) for e in history if e.by] == [
        ("Paused", "the cap was changed", key),
        ("Resumed", "the pause was acknowledged", key),
        ("Paused", "spend reached the cap", key),
    ]

    # the invoice: usage beyond what was acknowledged, after the new cap, is credited
    invoice = close_first_hour(clock)
    assert [(line.kind, line.amount_minor) for line in invoice.lines.order_by("position")] == [
        ("usage", 8243),
        ("cap_credit", -756),
    ]
    assert invoice.total_minor == 7487
    credit = invoice.lines.get(kind="cap_credit")
    assert credit.pricing == {"cap_minor": 4500, "uncapped_minor": 8243, "acknowledged_minor": 7487}
    assert describe_line_price(credit, currency="USD") == (
        "Budget cap $45.00, set after $74.87 of acknowledged usage (billed); "
        "usage rated at $82.43 before the cap"
    )
    assert reconcile() == []


def test_an_acknowledgement_covers_only_the_cap_it_acknowledged(
    on_tasks_plan, put_budget, acknowledge, post_tasks, clock
):
    put_budget(cap_minor=100, thresholds=[50, 100], action="pause")
    post_tasks(22)  # 110: paused at 100
    assert acknowledge().status_code == 200

    # the same cap again (other thresholds): still acknowledged, no pause
    assert put_budget(cap_minor=100, thresholds=[50, 80, 100], action="pause")["status"] == (
        "warning"
    )
    assert post_tasks(1)[0]["customers"]["acme"]["status"] == "warning"  # 115
    state = BudgetPeriodState.objects.get()
    assert (state.acknowledged_cap_minor, state.acknowledged_spent_minor) == (100, 0)

    # a raised cap: the acknowledgement ends; the pause holds again at the new cap
    assert put_budget(cap_minor=130, thresholds=[50, 100], action="pause")["status"] == "warning"
    state.refresh_from_db()
    assert (state.acknowledged_cap_minor, state.acknowledged_spent_minor) == (None, 115)
    statuses = [body["customers"]["acme"]["status"] for body in post_tasks(4)]  # 135
    assert statuses == ["warning", "warning", "paused", "paused"]
    assert acknowledge().status_code == 200  # the new cap can be acknowledged in turn
    state.refresh_from_db()
    assert state.acknowledged_cap_minor == 130

    invoice = close_first_hour(clock)
    assert invoice.total_minor == 135  # acknowledged: everything billed
    assert not invoice.lines.filter(kind="cap_credit").exists()


def test_a_lowered_cap_after_an_acknowledgement_bills_what_was_acknowledged(
    on_tasks_plan, put_budget, acknowledge, post_tasks, clock
):
    put_budget(cap_minor=100, action="pause")
    post_tasks(20)  # 100: paused
    assert acknowledge().status_code == 200
    post_tasks(4)  # 120, acknowledged

    body = put_budget(cap_minor=80, action="pause")

    assert (body["status"], body["spent_minor"]) == ("paused", 120)
    post_tasks(2)  # 130: 10 after the lowered cap
    invoice = close_first_hour(clock)
    assert [(line.kind, line.amount_minor) for line in invoice.lines.order_by("position")] == [
        ("usage", 130),
        ("cap_credit", -10),
    ]
    assert invoice.total_minor == 120


def test_a_removed_and_restored_cap_is_a_new_cap(
    on_tasks_plan, put_budget, acknowledge, post_tasks, clock
):
    put_budget(cap_minor=100, action="pause")
    post_tasks(21)  # 105: paused
    assert acknowledge().status_code == 200

    assert put_budget(cap_minor=None, action="pause")["status"] == "active"
    body = put_budget(cap_minor=100, action="pause")

    assert (body["status"], body["remaining_minor"]) == ("paused", 0)
    invoice = close_first_hour(clock)
    assert invoice.total_minor == 105  # what was acknowledged; nothing arrived after
    assert not invoice.lines.filter(kind="cap_credit").exists()


def test_without_an_acknowledgement_a_lowered_cap_still_limits_the_whole_period(
    on_tasks_plan, put_budget, post_tasks, clock
):
    """Unchanged: only an acknowledgement makes earlier spend billable beyond a later cap."""
    put_budget(cap_minor=200, action="pause")
    post_tasks(24)  # 120
    assert put_budget(cap_minor=100, action="pause")["status"] == "paused"

    invoice = close_first_hour(clock)

    assert [(line.kind, line.amount_minor) for line in invoice.lines.order_by("position")] == [
        ("usage", 120),
        ("cap_credit", -20),
    ]


def test_pauses_and_resumes_name_the_user_or_key_in_history_and_audit(
    on_tasks_plan,
    put_budget,
    post_tasks,
    acme_portal,
    service_key,
    clock,
    django_capture_on_commit_callbacks,
):
    key = key_label(service_key)
    put_budget(cap_minor=100, action="pause")
    post_tasks(20)  # paused by the key that posted the usage
    response = acme_portal.post("/portal/budget/acknowledge/")  # resumed by the portal user
    assert response.status_code == 302
    acme_portal.post("/portal/budget/", {"cap": "0.50", "thresholds": "100", "action": "pause"})
    clock.move_to(T0 + timedelta(hours=1, minutes=1))
    for _ in range(2):  # the new hour resumes it, by the system (beat), once
        with django_capture_on_commit_callbacks(execute=True):
            tasks.check_budgets()

    assert events() == [
        ("paused", "usage", key, 100, 100),
        ("resumed", "acknowledged", "acme-user", 100, 100),
        ("paused", "cap_changed", "acme-user", 100, 50),
        ("resumed", "new_period", "system", 0, 50),
    ]
    assert [(actor, data["cause"]) for actor, data in audit("budget.paused")] == [
        (key, "usage"),
        ("acme-user", "cap_changed"),
    ]
    assert [(actor, data["cause"]) for actor, data in audit("budget.resumed")] == [
        ("acme-user", "acknowledged"),
        ("system", "new_period"),
    ]
    assert [actor for actor, _ in audit("budget.acknowledged")] == ["acme-user"]
    page = acme_portal.get("/portal/budget/").content.decode()
    assert "Resumed: a new billing period began" in page
    assert "Paused: spend reached the cap" in page
    assert f"<td>{key}</td>" in page


def test_a_new_cap_past_several_thresholds_sends_one_message(
    on_tasks_plan, put_budget, post_tasks, operator_endpoint, mailoutbox
):
    post_tasks(18)  # 90 spent, no cap yet

    body = put_budget(cap_minor=100, thresholds=[50, 80, 100], action="pause")
    put_budget(cap_minor=100, thresholds=[50, 80, 100], action="pause")  # again: nothing new

    assert body["status"] == "warning"
    assert customer_subjects(mailoutbox) == ["80% of your budget used ($0.90 of $1.00)"]
    assert "The new cap finds the 50% and 80% thresholds crossed at once." in mailoutbox[0].body
    assert "At 100% your agents will be paused" in mailoutbox[0].body
    assert sorted(BudgetAlert.objects.values_list("threshold", flat=True)) == [50, 80]
    ((hook_event, thresholds, threshold),) = [
        (h.event, h.payload["data"]["thresholds"], h.payload["data"]["threshold"])
        for h in OperatorWebhook.objects.all()
    ]
    assert (hook_event, thresholds, threshold) == ("budget.threshold_crossed", [50, 80], 80)

    post_tasks(2)  # 100: the next threshold alone, as usage crosses it
    assert customer_subjects(mailoutbox)[1:] == ["100% of your budget used ($1.00 of $1.00)"]
    assert Notification.objects.filter(kind="budget_alert").count() == 2


def test_an_acknowledged_cap_is_not_said_to_pause(
    on_tasks_plan, put_budget, acknowledge, post_tasks, acme_portal, mailoutbox
):
    put_budget(cap_minor=100, thresholds=[50], action="pause")
    post_tasks(20)  # 100: paused (no 100% threshold)
    assert acknowledge().status_code == 200
    mails = len(mailoutbox)

    put_budget(cap_minor=100, thresholds=[50, 100], action="pause")  # same cap: acknowledged

    (mail,) = mailoutbox[mails:]
    assert mail.subject == "100% of your budget used ($1.00 of $1.00)"
    assert "You acknowledged this cap for the period" in mail.body
    assert "will be paused" not in mail.body and "are paused" not in mail.body
    dashboard = acme_portal.get("/portal/").content.decode()
    assert 'data-budget-status="warning"' in dashboard
    assert "acknowledged for this period: agents keep working" in dashboard
    assert "agents pause at the cap" not in dashboard


def test_acknowledging_a_pause_no_check_has_recorded_yet(
    on_tasks_plan, put_budget, record, api, service_key, django_capture_on_commit_callbacks
):
    """The allowance reports a pause the reads derive (usage no check has seen); the
    acknowledgement records that pause first, then resumes, instead of answering 409."""
    put_budget(cap_minor=100, action="pause")
    record([task_event(f"t{i}") for i in range(21)], now=T0 + 30 * M)  # 105, unchecked
    assert api.get(ALLOWANCE).json()["status"] == "paused"

    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(ACKNOWLEDGE)

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "warning"
    assert events() == [
        ("paused", "usage", "system", 105, 100),
        ("resumed", "acknowledged", key_label(service_key), 105, 100),
    ]
    assert Customer.objects.get(pk=on_tasks_plan.pk).status == "active"
