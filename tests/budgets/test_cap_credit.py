"""A cap is never exceeded silently: usage beyond an unacknowledged cap is on the invoice and
offset by a visible cap credit line; late usage of a capped period is offset on the next one."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from invoicing.models import BillingPeriod, Invoice, InvoiceLine
from invoicing.services import closing
from invoicing.services.reconcile import reconcile
from notifications import services
from tests.invoicing.conftest import T0

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clock")]
H = timedelta(hours=1)
M = timedelta(minutes=1)
CREDIT_TEXT = "Budget cap credit (this period): usage beyond the cap is not charged"


@pytest.fixture(autouse=True)
def _grace(settings):
    settings.BILLING_GRACE_PERIOD = 600
    settings.BILLING_REVIEW_PERIOD = 0


def close(hours: int, clock) -> Invoice:
    """Close the periods due `hours` hours after T0 (plus grace); the newest invoice."""
    at = T0 + hours * H + 10 * M
    clock.move_to(at)
    closing.close_due_periods(now=at)
    return Invoice.objects.get(period__start=T0 + (hours - 1) * H)


def lines_of(invoice: Invoice) -> list[tuple]:
    return [
        (line.kind, line.meter.code if line.meter else None, line.quantity, line.amount_minor)
        for line in invoice.lines.select_related("meter").order_by("position")
    ]


def test_usage_beyond_the_cap_is_credited(on_tasks_plan, put_budget, post_tasks, clock, api):
    put_budget(cap_minor=100, action="pause")
    post_tasks(30)  # 150 minor units, the last 10 tasks while paused

    invoice = close(1, clock)

    assert lines_of(invoice) == [
        ("usage", "agent_tasks", Decimal(30), 150),
        ("cap_credit", None, Decimal(0), -50),
    ]
    assert invoice.total_minor == 100
    credit = invoice.lines.get(kind="cap_credit")
    assert credit.description == CREDIT_TEXT
    assert credit.pricing == {"cap_minor": 100, "uncapped_minor": 150}
    assert credit.source_period == invoice.period
    assert reconcile() == []
    # the customer sees it in the invoice API...
    (listed,) = api.get("/api/v1/customers/acme/invoices").json()
    assert listed["total_minor"] == 100
    assert listed["lines"] == [
        {
            "meter": "agent_tasks",
            "description": "Agent Tasks",
            "quantity": "30",
            "amount_minor": 150,
            "kind": "usage",
        },
        {
            "meter": None,
            "description": CREDIT_TEXT,
            "quantity": "0",
            "amount_minor": -50,
            "kind": "cap_credit",
        },
    ]
    # ...and in the usage summary
    context = services.summary_context(invoice)
    assert [(line["kind"], line["amount"]) for line in context["lines"]] == [
        ("usage", "$1.50"),
        ("cap_credit", "-$0.50"),
    ]
    assert (context["total"], context["lines"][1]["pricing"]) == (
        "$1.00",
        "Budget cap $1.00; usage rated at $1.50 before the cap",
    )


def test_usage_at_or_under_the_cap_gets_no_credit(on_tasks_plan, put_budget, post_tasks, clock):
    put_budget(cap_minor=100, action="pause")
    post_tasks(20)

    invoice = close(1, clock)

    assert lines_of(invoice) == [("usage", "agent_tasks", Decimal(20), 100)]
    assert invoice.total_minor == 100


def test_the_cap_covers_the_plans_minimum_charges_too(
    subscribed, put_budget, post_tasks, clock, mailoutbox
):
    """On the DESIGN example plan, agent_minutes costs at least 500 per period, so spend starts
    at 500: a cap of 100 is reached by the first check, and the invoice is capped at 100."""
    put_budget(cap_minor=100, thresholds=[50, 80, 100], action="pause")
    first = post_tasks(1)[0]
    assert first["customers"] == {"acme": {"status": "paused", "remaining_minor": 0}}
    # the new cap finds 50, 80 and 100 % crossed at once: one message to the customer (issue
    # 13 item 7; it was one per threshold), and finance's pause notice
    assert [m.subject for m in mailoutbox] == [
        "100% of your budget used ($5.00 of $1.00)",
        "Customer acme paused at its budget cap",
    ]
    post_tasks(29)

    invoice = close(1, clock)

    # minutes: minimum 500; tasks: 30 x 5 = 150; tokens: 0; uncapped 650, capped to 100
    assert lines_of(invoice) == [
        ("usage", "agent_minutes", Decimal(0), 500),
        ("usage", "agent_tasks", Decimal(30), 150),
        ("usage", "llm_tokens", Decimal(0), 0),
        ("cap_credit", None, Decimal(0), -550),
    ]
    assert invoice.total_minor == 100


def test_acknowledged_cap_bills_everything(
    on_tasks_plan, put_budget, post_tasks, acknowledge, clock
):
    put_budget(cap_minor=100, action="pause")
    post_tasks(20)
    assert acknowledge().status_code == 200
    post_tasks(10)

    invoice = close(1, clock)

    assert lines_of(invoice) == [("usage", "agent_tasks", Decimal(30), 150)]
    assert invoice.total_minor == 150
    assert not InvoiceLine.objects.filter(kind="cap_credit").exists()


def test_raised_cap_bills_up_to_the_new_cap(on_tasks_plan, put_budget, post_tasks, clock):
    put_budget(cap_minor=100, action="pause")
    post_tasks(20)
    put_budget(cap_minor=120, action="pause")
    post_tasks(10)  # 150: 30 beyond the new cap

    invoice = close(1, clock)

    assert [line[3] for line in lines_of(invoice)] == [150, -30]
    assert invoice.total_minor == 120


def test_late_usage_of_a_capped_period_is_offset_on_the_next_invoice(
    on_tasks_plan, put_budget, post_tasks, clock
):
    put_budget(cap_minor=100, action="pause")
    post_tasks(16)  # 80: under the cap
    first = close(1, clock)
    assert (lines_of(first), first.total_minor) == ([("usage", "agent_tasks", Decimal(16), 80)], 80)

    # 6 tasks of the first hour arrive after its close: 110 in all, 10 beyond the cap
    clock.move_to(T0 + H + 30 * M)
    late_at = T0 + 50 * M
    post_tasks(6, at=late_at, prefix="late")
    second = close(2, clock)

    period_1 = BillingPeriod.objects.get(start=T0)
    assert lines_of(second) == [
        ("usage", "agent_tasks", Decimal(0), 0),
        ("adjustment", "agent_tasks", Decimal(6), 30),
        ("cap_credit", None, Decimal(0), -10),
    ]
    assert second.total_minor == 20
    credit = second.lines.get(kind="cap_credit")
    assert credit.source_period == period_1
    assert credit.pricing == {"cap_minor": 100, "uncapped_minor": 110}
    assert "2026-11-02 10:00 to 2026-11-02 11:00 UTC" in credit.description

    # one more late task: its whole amount is credited
    clock.move_to(T0 + 2 * H + 30 * M)
    post_tasks(1, at=late_at, prefix="later")
    third = close(3, clock)
    assert lines_of(third) == [
        ("usage", "agent_tasks", Decimal(0), 0),
        ("adjustment", "agent_tasks", Decimal(1), 5),
        ("cap_credit", None, Decimal(0), -5),
    ]
    assert third.total_minor == 0

    # what the first hour billed over all invoices is exactly the cap
    billed_for_period_1 = sum(
        InvoiceLine.objects.filter(source_period=period_1).values_list("amount_minor", flat=True)
    ) + sum(first.lines.filter(source_period__isnull=True).values_list("amount_minor", flat=True))
    assert billed_for_period_1 == 100
    assert reconcile() == []


def test_late_usage_of_an_acknowledged_period_is_billed_in_full(
    on_tasks_plan, put_budget, post_tasks, acknowledge, clock
):
    put_budget(cap_minor=100, action="pause")
    post_tasks(20)
    acknowledge()
    close(1, clock)
    clock.move_to(T0 + H + 30 * M)
    post_tasks(4, at=T0 + 50 * M, prefix="late")

    second = close(2, clock)

    assert [(kind, amount) for kind, _, _, amount in lines_of(second)] == [
        ("usage", 0),
        ("adjustment", 20),
    ]
    assert second.total_minor == 20
