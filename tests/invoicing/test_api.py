"""The invoicing side of the agent API: plans, customers with a plan, usage so far, invoices."""

from __future__ import annotations

import copy
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from rest_framework.test import APIClient

from audit.models import AuditEntry
from invoicing.models import BillingPeriod, Invoice, PricePlan, Subscription
from invoicing.pricing import price_spec
from invoicing.services import closing, invoices
from metering import services as metering_services
from metering.models import Customer
from tests.invoicing.conftest import EXAMPLE_PRICES, T0
from tests.invoicing.test_closing import ev, usage_events

pytestmark = pytest.mark.django_db
H = timedelta(hours=1)
GRACE = {"BILLING_GRACE_PERIOD": 600, "BILLING_REVIEW_PERIOD": 1800}

# DESIGN section 4, verbatim.
DESIGN_PLAN = {
    "code": "pro",
    "name": "Pro",
    "currency": "USD",
    "interval": "month",
    "prices": [
        {"meter": "agent_tasks", "model": "per_unit", "unit_amount_minor": "5"},
        {
            "meter": "llm_tokens",
            "model": "graduated",
            "included_quantity": "100000",
            "tiers": [
                {"up_to": "1000000", "unit_amount_minor": "0.002", "flat_amount_minor": 0},
                {"up_to": None, "unit_amount_minor": "0.001"},
            ],
        },
        {
            "meter": "agent_minutes",
            "model": "package",
            "package_size": "60",
            "package_amount_minor": 150,
            "minimum_minor": 500,
        },
    ],
}


def design_plan(**changes) -> dict:
    plan = copy.deepcopy(DESIGN_PLAN)
    plan.update(changes)
    return plan


def client_for(key_plaintext: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key_plaintext}")
    return client


def stored_prices(plan: PricePlan) -> dict:
    prices = plan.prices.select_related("meter").prefetch_related("tiers")
    return {price.meter.code: price_spec(price) for price in prices}


def error(field, message) -> dict:
    return {"errors": [{"index": None, "field": field, "message": message}]}


# --- Plans ----------------------------------------------------------------------------------


def test_posting_the_design_plan_creates_version_1_then_2(api, meters):
    first = api.post("/api/v1/plans", DESIGN_PLAN, format="json")

    assert first.status_code == 201, first.content
    body = first.json()
    assert (body["code"], body["version"], body["name"], body["currency"], body["interval"]) == (
        "pro",
        1,
        "Pro",
        "USD",
        "month",
    )
    assert [p["meter"] for p in body["prices"]] == ["agent_minutes", "agent_tasks", "llm_tokens"]
    v1 = PricePlan.objects.get(code="pro", version=1)
    assert stored_prices(v1) == {item.meter: item.spec for item in EXAMPLE_PRICES}

    second = api.post("/api/v1/plans", DESIGN_PLAN, format="json")

    assert second.status_code == 201
    assert second.json()["version"] == 2
    v2 = PricePlan.objects.get(code="pro", version=2)
    assert stored_prices(v2) == stored_prices(v1)
    assert list(PricePlan.objects.values_list("code", "version")) == [("pro", 2), ("pro", 1)]


def test_plan_output_prices_are_exact_decimal_strings(api, meters):
    body = api.post("/api/v1/plans", DESIGN_PLAN, format="json").json()
    tokens = next(p for p in body["prices"] if p["meter"] == "llm_tokens")
    assert tokens["tiers"][0] == {
        "up_to": "1000000",
        "unit_amount_minor": "0.002",
        "flat_amount_minor": 0,
    }


@pytest.mark.usefixtures("meters")
def test_a_new_version_applies_from_the_next_period(api, settings):
    settings.BILLING_GRACE_PERIOD = 600
    hourly = design_plan(interval="hour")
    with time_machine.travel(T0 + timedelta(minutes=5), tick=False):
        assert api.post("/api/v1/plans", hourly, format="json").json()["version"] == 1
        created = api.post(
            "/api/v1/customers",
            {"customer_id": "initech", "name": "Initech", "plan": "pro"},
            format="json",
        )
        assert created.status_code == 201
        tasks = [ev(f"t{i}", "agent_tasks", None, T0 + timedelta(minutes=i)) for i in (1, 2)]
        for task in tasks:
            task["customer_id"] = "initech"
        assert api.post("/api/v1/events", {"events": tasks}, format="json").status_code == 202
    v1 = PricePlan.objects.get(version=1)

    dearer = design_plan(interval="hour")
    dearer["prices"][0]["unit_amount_minor"] = "7"
    with time_machine.travel(T0 + timedelta(minutes=20), tick=False):
        response = api.post("/api/v1/plans", dearer, format="json")
    assert response.status_code == 201 and response.json()["version"] == 2
    v2 = PricePlan.objects.get(version=2)

    customer = Customer.objects.get(external_id="initech")
    assert Subscription.objects.get(customer=customer).plan == v2
    current = BillingPeriod.objects.get(customer=customer)
    assert (current.start, current.plan) == (T0, v1)  # the running period keeps v1

    closing.close_due_periods(now=T0 + H + timedelta(minutes=10))

    periods = BillingPeriod.objects.filter(customer=customer).order_by("start")
    assert [(p.start, p.plan.version, p.status) for p in periods] == [
        (T0, 1, "closed"),
        (T0 + H, 2, "open"),
    ]
    invoice = Invoice.objects.get(period__start=T0)
    tasks_line = invoice.lines.get(meter__code="agent_tasks")
    assert (tasks_line.quantity, tasks_line.amount_minor) == (Decimal(2), 10)  # 2 x 5, v1


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"prices": [{"meter": "nope", "model": "per_unit", "unit_amount_minor": "5"}]},
            [("prices[0].meter", "unknown meter 'nope'")],
        ),
        (
            {
                "prices": [
                    {
                        "meter": "llm_tokens",
                        "model": "graduated",
                        "tiers": [
                            {"up_to": None, "unit_amount_minor": "0.002"},
                            {"up_to": "1000", "unit_amount_minor": "0.001"},
                        ],
                    }
                ]
            },
            [
                (
                    "prices[0]",
                    "tiers[0].up_to may be empty (open) only on the last tier; "
                    "tiers[1].up_to must be empty: the last tier is open",
                )
            ],
        ),
        (
            {"prices": [{"meter": "agent_tasks", "model": "per_unit", "unit_amount_minor": "-1"}]},
            [("prices[0].unit_amount_minor", "Ensure this value is greater than or equal to 0.")],
        ),
        ({"currency": "XYZ"}, [("currency", '"XYZ" is not a valid choice.')]),
    ],
    ids=["unknown-meter", "invalid-tiers", "negative-unit-amount", "unknown-currency"],
)
@pytest.mark.usefixtures("meters")
def test_invalid_plans_are_422_and_store_nothing(api, change, expected):
    response = api.post("/api/v1/plans", design_plan(**change), format="json")

    assert response.status_code == 422
    assert response.json() == {
        "errors": [
            {"index": None, "field": field, "message": message} for field, message in expected
        ]
    }
    assert PricePlan.objects.count() == 0
    assert not AuditEntry.objects.exists()


def test_a_version_in_another_currency_than_its_subscribers_is_422(api, subscribed):
    response = api.post("/api/v1/plans", design_plan(currency="EUR"), format="json")

    assert response.status_code == 422
    assert response.json() == error(
        "currency", "subscribers of pro pay in USD; a new version must bill in their currency"
    )
    assert list(PricePlan.objects.values_list("code", "version", "currency")) == [("pro", 1, "USD")]
    assert Subscription.objects.get().plan.version == 1
    assert AuditEntry.objects.filter(action="plan.version_created").count() == 1  # v1 only


def test_plans_need_a_service_wide_key(customer, meters):
    _, scoped = metering_services.create_api_key(name="acme agents", customer=customer)

    response = client_for(scoped).post("/api/v1/plans", DESIGN_PLAN, format="json")

    assert response.status_code == 403
    assert response.json() == error(None, "this endpoint needs a service-wide API key")
    assert PricePlan.objects.count() == 0


# --- Customers with a plan ------------------------------------------------------------------


@pytest.mark.usefixtures("hourly_plan")
def test_a_customer_posted_with_a_plan_is_subscribed(api):
    with time_machine.travel(T0 + timedelta(minutes=30), tick=False):
        response = api.post(
            "/api/v1/customers",
            {
                "customer_id": "initech",
                "name": "Initech",
                "emails": ["ap@initech.example"],
                "timezone": "Europe/Paris",
                "plan": "pro",
            },
            format="json",
        )

    assert response.status_code == 201
    assert response.json() == {
        "customer_id": "initech",
        "name": "Initech",
        "emails": ["ap@initech.example"],
        "currency": "USD",  # a new customer pays in its plan's currency
        "timezone": "Europe/Paris",
        "status": "active",
    }
    subscription = Subscription.objects.select_related("plan").get(customer__external_id="initech")
    assert (subscription.plan.code, subscription.plan.version) == ("pro", 1)
    assert (subscription.anchor, subscription.started_at) == (T0, T0 + timedelta(minutes=30))
    period = BillingPeriod.objects.get(customer__external_id="initech")
    assert (period.start, period.end, period.status, period.plan) == (
        T0,
        T0 + H,
        "open",
        subscription.plan,
    )


def _nothing_changed_for_acme():
    acme = Customer.objects.get(external_id="acme")
    assert (acme.name, acme.currency) == ("Acme Corp", "USD")
    assert not Subscription.objects.exists() and not BillingPeriod.objects.exists()
    assert not AuditEntry.objects.filter(action__startswith="subscription.").exists()


def test_a_plan_in_another_currency_is_422_naming_plan(api, customer, hourly_plan):
    response = api.post(
        "/api/v1/customers",
        {"customer_id": "acme", "name": "Renamed", "currency": "EUR", "plan": "pro"},
        format="json",
    )

    assert response.status_code == 422
    assert response.json() == error("plan", "plan pro bills in USD but the customer pays in EUR")
    _nothing_changed_for_acme()

    new = api.post(
        "/api/v1/customers",
        {"customer_id": "euroco", "currency": "EUR", "plan": "pro"},
        format="json",
    )
    assert new.status_code == 422
    assert new.json() == error("plan", "plan pro bills in USD but the customer pays in EUR")
    assert not Customer.objects.filter(external_id="euroco").exists()


def test_an_unknown_plan_is_422(api, customer):
    response = api.post(
        "/api/v1/customers",
        {"customer_id": "acme", "name": "Renamed", "plan": "platinum"},
        format="json",
    )

    assert response.status_code == 422
    assert response.json() == error("plan", "unknown plan")
    _nothing_changed_for_acme()


# --- Usage so far and invoices --------------------------------------------------------------


def post_events(api, events, *, at):
    with time_machine.travel(at, tick=False):
        response = api.post("/api/v1/events", {"events": events}, format="json")
    assert response.status_code == 202, response.content
    return response


def get_at(client, url, *, at):
    with time_machine.travel(at, tick=False):
        return client.get(url)


def test_usage_so_far_equals_the_invoice_after_the_close(api, subscribed, settings):
    settings.BILLING_GRACE_PERIOD = 600
    post_events(api, usage_events(), at=T0 + timedelta(minutes=20))

    response = get_at(api, "/api/v1/customers/acme/usage", at=T0 + timedelta(minutes=30))

    assert response.status_code == 200
    usage = response.json()
    assert usage == {
        "customer_id": "acme",
        "currency": "USD",
        "period_start": "2026-11-02T10:00:00Z",
        "period_end": "2026-11-02T11:00:00Z",
        "lines": [
            {"meter": "agent_minutes", "quantity": "61", "amount_minor": 500},
            {"meter": "agent_tasks", "quantity": "3", "amount_minor": 15},
            {"meter": "llm_tokens", "quantity": "1500000.5", "amount_minor": 2400},
        ],
        "total_minor": 2915,
    }

    closing.close_due_periods(now=T0 + H + timedelta(minutes=10))

    invoice = Invoice.objects.get(period__start=T0)
    lines = invoice.lines.select_related("meter").order_by("position")
    assert [
        {
            "meter": line.meter.code,
            "quantity": format(line.quantity.normalize(), "f"),
            "amount_minor": line.amount_minor,
        }
        for line in lines
    ] == usage["lines"]
    assert invoice.total_minor == usage["total_minor"]


def test_usage_of_an_empty_period_shows_every_priced_meter(api, subscribed):
    response = get_at(api, "/api/v1/customers/acme/usage", at=T0 + timedelta(minutes=1))
    assert response.json()["lines"] == [
        {"meter": "agent_minutes", "quantity": "0", "amount_minor": 500},
        {"meter": "agent_tasks", "quantity": "0", "amount_minor": 0},
        {"meter": "llm_tokens", "quantity": "0", "amount_minor": 0},
    ]
    assert response.json()["total_minor"] == 500


def test_invoices_newest_first_with_numbers_once_final(api, subscribed, settings):
    settings.BILLING_GRACE_PERIOD = 600
    post_events(api, usage_events(), at=T0 + timedelta(minutes=20))
    closing.close_due_periods(now=T0 + H + timedelta(minutes=10))
    first = Invoice.objects.get(period__start=T0)
    invoices.mark_summary_sent(invoice_id=first.pk, at=T0 + H + timedelta(minutes=10))
    invoices.finalize_invoice(invoice_id=first.pk, now=T0 + H + timedelta(minutes=15))
    late = ev("late-1", "llm_tokens", 200_000, T0 + timedelta(minutes=50))
    post_events(api, [late], at=T0 + H + timedelta(minutes=30))
    closing.close_due_periods(now=T0 + 2 * H + timedelta(minutes=10))

    response = get_at(api, "/api/v1/customers/acme/invoices", at=T0 + 2 * H + timedelta(minutes=20))

    assert response.status_code == 200
    assert response.json() == [
        {
            "number": None,
            "status": "draft",
            "period_start": "2026-11-02T11:00:00Z",
            "period_end": "2026-11-02T12:00:00Z",
            "currency": "USD",
            "total_minor": 700,
            "lines": [
                {
                    "meter": "agent_minutes",
                    "description": "Agent Minutes",
                    "quantity": "0",
                    "amount_minor": 500,
                    "kind": "usage",
                },
                {
                    "meter": "agent_tasks",
                    "description": "Agent Tasks",
                    "quantity": "0",
                    "amount_minor": 0,
                    "kind": "usage",
                },
                {
                    "meter": "llm_tokens",
                    "description": "Llm Tokens",
                    "quantity": "0",
                    "amount_minor": 0,
                    "kind": "usage",
                },
                {
                    "meter": "llm_tokens",
                    "description": "Llm Tokens: usage from 2026-11-02 10:00 to "
                    "2026-11-02 11:00 UTC received late",
                    "quantity": "200000",
                    "amount_minor": 200,
                    "kind": "adjustment",
                },
            ],
        },
        {
            "number": "INV-2026-000001",
            "status": "finalized",
            "period_start": "2026-11-02T10:00:00Z",
            "period_end": "2026-11-02T11:00:00Z",
            "currency": "USD",
            "total_minor": 2915,
            "lines": [
                {
                    "meter": "agent_minutes",
                    "description": "Agent Minutes",
                    "quantity": "61",
                    "amount_minor": 500,
                    "kind": "usage",
                },
                {
                    "meter": "agent_tasks",
                    "description": "Agent Tasks",
                    "quantity": "3",
                    "amount_minor": 15,
                    "kind": "usage",
                },
                {
                    "meter": "llm_tokens",
                    "description": "Llm Tokens",
                    "quantity": "1500000.5",
                    "amount_minor": 2400,
                    "kind": "usage",
                },
            ],
        },
    ]


def test_a_key_scoped_to_another_customer_gets_404(subscribed, other_customer):
    _, globex_key = metering_services.create_api_key(name="globex", customer=other_customer)
    _, acme_key = metering_services.create_api_key(name="acme", customer=subscribed)
    at = T0 + timedelta(minutes=5)
    for path in ("usage", "invoices"):
        url = f"/api/v1/customers/acme/{path}"
        response = get_at(client_for(globex_key), url, at=at)
        assert response.status_code == 404, path
        assert response.json() == error(None, "unknown customer")
        assert get_at(client_for(acme_key), url, at=at).status_code == 200, path


def test_unknown_customers_and_customers_without_a_plan_get_404(api, subscribed, other_customer):
    at = T0 + timedelta(minutes=5)
    for path in ("usage", "invoices"):
        response = get_at(api, f"/api/v1/customers/nobody/{path}", at=at)
        assert response.status_code == 404, path
        assert response.json() == error(None, "unknown customer")
    no_plan = get_at(api, "/api/v1/customers/globex/usage", at=at)
    assert no_plan.status_code == 404
    assert no_plan.json() == error(None, "the customer has no plan")
    assert get_at(api, "/api/v1/customers/globex/invoices", at=at).json() == []
