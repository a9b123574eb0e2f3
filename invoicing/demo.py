"""Demo plans for the embedded default (idempotent): the demo customers get a plan each."""

from __future__ import annotations

from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from invoicing.models import PricePlan
from invoicing.rating import PriceSpec, Tier
from invoicing.services import plans, subscriptions
from metering.models import Customer

D = Decimal
DEMO_PRICES = [
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
# The demo plans price LLM tokens by model and token type (DESIGN 4a): `large` and `small`
# are priced, input and output apart; `medium` (which the demo agents also use) is left
# unpriced on purpose, so finance sees the unpriced flow (the admin list, bill or waive).
DEMO_TOKEN_RATE_CARD = plans.PriceInput(
    "llm_tokens",
    None,
    dimensions=("model", "token_type"),
    rates=(
        ({"model": "large", "token_type": "output"}, PriceSpec("per_unit", D("0.006"))),
        ({"model": "large"}, PriceSpec("per_unit", D("0.002"))),
        ({"model": "small", "token_type": "output"}, PriceSpec("per_unit", D("0.0008"))),
        (
            {"model": "small"},
            PriceSpec(
                "graduated",
                included_quantity=D("100000"),
                tiers=(Tier(D("1000000"), D("0.0002")), Tier(None, D("0.0001"))),
            ),
        ),
    ),
)
DEMO_PLAN_PRICES = [
    price if price.meter != "llm_tokens" else DEMO_TOKEN_RATE_CARD for price in DEMO_PRICES
]
# (plan code, name, currency, interval, customer external id)
DEMO_PLANS = [
    ("demo-hourly", "Demo (hourly periods)", "USD", "hour", "acme"),
    ("pro-eur", "Pro (EUR)", "EUR", "month", "globex"),
    ("pro-usd", "Pro (USD)", "USD", "month", "initech"),
]


@transaction.atomic
def seed_invoicing_demo() -> list[str]:
    """Create the demo plans if missing and subscribe the demo customers to them."""
    lines = []
    now = timezone.now()
    for code, name, currency, interval, external_id in DEMO_PLANS:
        plan = PricePlan.objects.filter(code=code).order_by("-version").first()
        if plan is None:
            plan = plans.create_plan_version(
                code=code,
                name=name,
                currency=currency,
                interval=interval,
                prices=DEMO_PLAN_PRICES,
            )
        customer = Customer.objects.get(external_id=external_id)
        subscriptions.subscribe_customer(customer=customer, plan=plan, now=now)
        lines.append(f"{external_id} on plan {code} v{plan.version} ({interval}, {currency})")
    return lines
