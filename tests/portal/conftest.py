"""Portal fixtures: customers with a portal login, a monthly plan, usage in the current period
and a closed earlier period with its draft invoice, all built through the services."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from invoicing.demo import DEMO_PRICES
from invoicing.models import BillingPeriod, Invoice, PricePlan
from invoicing.services import closing, plans, subscriptions
from metering import services as metering_services
from metering.models import Customer, PortalMembership
from tests.factories import CustomerFactory, MeterFactory

PASSWORD = "portal-password-1"


@dataclass
class PortalCustomer:
    customer: Customer
    user: User
    plan: PricePlan | None = None

    @property
    def period(self) -> BillingPeriod:
        return subscriptions.current_period(customer=self.customer, now=timezone.now())


def make_meters() -> dict:
    return {
        "agent_tasks": MeterFactory(
            code="agent_tasks", name="Agent tasks", unit="task", aggregation="count"
        ),
        "llm_tokens": MeterFactory(
            code="llm_tokens", name="LLM tokens", unit="token", aggregation="sum"
        ),
        "agent_minutes": MeterFactory(
            code="agent_minutes", name="Agent minutes", unit="minute", aggregation="sum"
        ),
    }


def make_portal_customer(
    external_id: str, *, currency: str = "USD", tz: str = "UTC", username: str | None = None
) -> PortalCustomer:
    customer = CustomerFactory(
        external_id=external_id,
        name=f"{external_id.title()} Inc.",
        currency=currency,
        timezone=tz,
    )
    username = username or f"{external_id}-user"
    user = User.objects.create_user(
        username=username, email=f"{username}@{external_id}.example", password=PASSWORD
    )
    PortalMembership.objects.create(user=user, customer=customer)
    return PortalCustomer(customer=customer, user=user)


def monthly_plan(currency: str) -> PricePlan:
    code = f"portal-{currency.lower()}"
    return plans.latest_plan(code) or plans.create_plan_version(
        code=code,
        name=f"Portal {currency}",
        currency=currency,
        interval="month",
        prices=DEMO_PRICES,
    )


def subscribe(portal: PortalCustomer, *, since: datetime) -> PortalCustomer:
    """Put the customer on the monthly plan from `since` (periods materialised up to now)."""
    portal.plan = monthly_plan(portal.customer.currency)
    subscriptions.subscribe_customer(customer=portal.customer, plan=portal.plan, now=since)
    subscriptions.current_period(customer=portal.customer, now=timezone.now())
    return portal


def record(api_key, customer: Customer, events: list[tuple], *, now: datetime) -> None:
    """Record (event_id, meter, quantity or None, timestamp, properties) through ingestion."""
    raw = []
    for event_id, meter, quantity, at, properties in events:
        event = {
            "event_id": event_id,
            "customer_id": customer.external_id,
            "meter": meter,
            "timestamp": at.isoformat(),
            "properties": properties,
        }
        if quantity is not None:
            event["quantity"] = str(quantity)
        raw.append(event)
    result = metering_services.record_usage_events(api_key=api_key, raw_events=raw, now=now)
    assert result.count("accepted") == len(raw), result


def current_usage_events(period: BillingPeriod, now: datetime, prefix: str = "e") -> list[tuple]:
    """Nine events spread over the period so far (all in the last day when the period allows),
    for three agents and two models."""
    start = max(period.start, now - timedelta(hours=20))
    span = now - start

    def at(k: int) -> datetime:
        return start + span * k / 10

    return [
        (f"{prefix}-t1", "agent_tasks", None, at(1), {"agent_id": "alpha", "model": "m1"}),
        (f"{prefix}-t2", "agent_tasks", None, at(2), {"agent_id": "alpha", "model": "m2"}),
        (f"{prefix}-t3", "agent_tasks", None, at(3), {"agent_id": "beta", "model": "m1"}),
        (f"{prefix}-t4", "agent_tasks", None, at(4), {"agent_id": "gamma"}),
        (f"{prefix}-k1", "llm_tokens", 900_000, at(5), {"agent_id": "alpha", "model": "m1"}),
        (f"{prefix}-k2", "llm_tokens", "600000.5", at(6), {"agent_id": "beta", "model": "m2"}),
        (f"{prefix}-k3", "llm_tokens", 1_250, at(7), {}),
        (f"{prefix}-m1", "agent_minutes", "61", at(8), {"agent_id": "alpha"}),
        (f"{prefix}-m2", "agent_minutes", "12.25", at(9), {"agent_id": "gamma"}),
    ]


def build_history(portal: PortalCustomer, api_key, *, prefix: str = "e") -> Invoice:
    """Subscribed since the last day of last month: last month closed into a draft invoice
    with usage, and usage in the current period. Returns the draft of the previous period."""
    now = timezone.now()
    local = now.astimezone(ZoneInfo(portal.customer.timezone))
    subscribe(portal, since=local.replace(day=1) - timedelta(days=1))
    customer = portal.customer
    previous = (
        BillingPeriod.objects.filter(customer=customer, end__lte=now).order_by("-start").first()
    )
    assert previous is not None
    old = previous.start + (min(previous.end, now) - previous.start) / 2
    record(
        api_key,
        customer,
        [
            (f"{prefix}-old-t1", "agent_tasks", None, old, {"agent_id": "alpha"}),
            (f"{prefix}-old-k1", "llm_tokens", 250_000, old, {"agent_id": "alpha"}),
        ],
        now=old + timedelta(minutes=1),
    )
    # The previous period is due once its grace period is over (at once, unless the month
    # began less than the grace period ago).
    grace = timedelta(seconds=settings.BILLING_GRACE_PERIOD + 1)
    closing.close_due_periods(now=max(now, previous.end + grace))
    record(api_key, customer, current_usage_events(portal.period, now, prefix), now=now)
    return Invoice.objects.get(period=previous)


@pytest.fixture
def portal_meters(db):
    return make_meters()


@pytest.fixture
def acme(portal_meters):
    return make_portal_customer("acme", tz="America/New_York")


@pytest.fixture
def globex(portal_meters):
    return make_portal_customer("globex", currency="EUR", tz="Europe/Berlin")


@pytest.fixture
def client_for(client):
    """A test client logged in as a portal customer's user (or any user)."""

    def _login(user: User):
        client.force_login(user)
        return client

    return _login
