"""Budget awareness: a customer paused at its cap makes ensure_allowed raise BudgetExceeded."""

from __future__ import annotations

from decimal import Decimal

import pytest
import requests
from agent_billing import BudgetExceeded
from django.utils import timezone

from budgets import services as budget_services
from invoicing.rating import PriceSpec
from invoicing.services import plans, subscriptions
from metering.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)

CAP_MINOR = 100  # 20 tasks at 5 minor units each


@pytest.fixture
def capped(customer, meters):
    """acme on a monthly plan (5 minor units a task) with a pausing cap of 100."""
    plan = plans.create_plan_version(
        code="client-test",
        name="Client test",
        currency="USD",
        interval="month",
        prices=[
            plans.PriceInput(
                "agent_tasks", PriceSpec(model="per_unit", unit_amount_minor=Decimal(5))
            )
        ],
    )
    now = timezone.now()
    subscriptions.subscribe_customer(customer=customer, plan=plan, now=now)
    budget_services.set_budget_cap(
        customer=customer, cap_minor=CAP_MINOR, thresholds=[50, 100], action="pause", now=now
    )
    return customer


def acknowledge(live_server, key: str) -> requests.Response:
    return requests.post(
        f"{live_server.url}/api/v1/customers/acme/budget/acknowledge",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def test_paused_customer_raises_budget_exceeded_until_acknowledged(
    make_client, capped, live_server, service_key
):
    client = make_client(allowance_ttl=0)  # every check asks the service
    assert client.ensure_allowed("acme")["status"] == "active"

    for _ in range(CAP_MINOR // 5):  # up to the cap: every check passes
        client.ensure_allowed("acme")  # an agent asks before each task...
        client.record("acme", "agent_tasks")  # ...and reports it
    assert client.flush(timeout=10)
    with pytest.raises(BudgetExceeded) as raised:
        client.ensure_allowed("acme")
    allowance = raised.value.allowance
    assert allowance["status"] == "paused"
    assert allowance["cap_minor"] == CAP_MINOR
    assert allowance["spent_minor"] >= CAP_MINOR
    assert allowance["remaining_minor"] == 0
    assert raised.value.customer_id == "acme"
    assert UsageEvent.objects.count() == CAP_MINOR // 5

    # Usage that still arrives while paused is recorded, never lost.
    client.record("acme", "agent_tasks")
    assert client.flush(timeout=10)
    assert UsageEvent.objects.count() == CAP_MINOR // 5 + 1

    assert acknowledge(live_server, service_key[1]).status_code == 200
    assert client.ensure_allowed("acme")["status"] in ("active", "warning")


def test_ingestion_answers_refresh_the_cached_status(
    make_client, capped, live_server, service_key, proxy
):
    client = make_client(proxy.url, allowance_ttl=60)

    def allowance_requests() -> int:
        return sum(1 for r in proxy.requests if r["path"].endswith("/allowance"))

    assert client.ensure_allowed("acme")["status"] == "active"
    assert client.ensure_allowed("acme")["status"] == "active"
    assert allowance_requests() == 1  # cached

    for _ in range(CAP_MINOR // 5):
        client.record("acme", "agent_tasks")
    assert client.flush(timeout=10)
    with pytest.raises(BudgetExceeded) as raised:
        client.ensure_allowed("acme")  # known from the ingestion answer, not asked again
    assert allowance_requests() == 1
    assert raised.value.allowance["status"] == "paused"

    assert acknowledge(live_server, service_key[1]).status_code == 200
    with pytest.raises(BudgetExceeded):
        client.ensure_allowed("acme")  # still cached for allowance_ttl seconds
    assert client.allowance("acme", refresh=True)["status"] in ("active", "warning")
    assert client.ensure_allowed("acme")["status"] in ("active", "warning")
    assert allowance_requests() == 2
