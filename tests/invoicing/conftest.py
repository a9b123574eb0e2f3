"""Fixtures for invoicing: the DESIGN example plan on an hourly interval, a subscribed customer."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from invoicing.rating import PriceSpec, Tier
from invoicing.services import plans, subscriptions
from metering import services as metering_services

D = Decimal
# A fixed hour boundary: the customer subscribes at T0 on an hourly plan.
T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)

EXAMPLE_PRICES = [
    plans.PriceInput("agent_tasks", PriceSpec(model="per_unit", unit_amount_minor=D("5"))),
    plans.PriceInput(
        "llm_tokens",
        PriceSpec(
            model="graduated",
            included_quantity=D("100000"),
            tiers=(Tier(D("1000000"), D("0.002")), Tier(None, D("0.001"))),
        ),
    ),
    plans.PriceInput(
        "agent_minutes",
        PriceSpec(
            model="package", package_size=D("60"), package_amount_minor=150, minimum_minor=500
        ),
    ),
]


@pytest.fixture
def hourly_plan(meters):
    return plans.create_plan_version(
        code="pro", name="Pro", currency="USD", interval="hour", prices=EXAMPLE_PRICES
    )


@pytest.fixture
def subscribed(customer, hourly_plan):
    """`customer` (acme) subscribed to the hourly plan at T0."""
    subscriptions.subscribe_customer(customer=customer, plan=hourly_plan, now=T0)
    return customer


@pytest.fixture
def record(service_key):
    """Record events directly through the ingestion service, as the API does."""

    def _record(events, *, now):
        return metering_services.record_usage_events(
            api_key=service_key[0], raw_events=events, now=now
        )

    return _record
