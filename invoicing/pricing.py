"""From stored prices to the rating engine's PriceSpec, and lines drafted with it.

Everything that shows a money amount for usage (the invoice, the usage API, the allowance, the
budget check, the summary) drafts its lines here, so they all rate the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from invoicing.models import Price, PricePlan
from invoicing.rating import PriceSpec, RatedLine, Tier, rate_line
from metering.models import Meter


def price_spec(price: Price) -> PriceSpec:
    """The rating engine's view of a stored price (tiers in position order)."""
    tiers = tuple(
        Tier(
            up_to=tier.up_to,
            unit_amount_minor=tier.unit_amount_minor,
            flat_amount_minor=tier.flat_amount_minor,
        )
        for tier in sorted(price.tiers.all(), key=lambda t: t.position)
    )
    return PriceSpec(
        model=price.model,
        unit_amount_minor=price.unit_amount_minor,
        tiers=tiers,
        package_size=price.package_size,
        package_amount_minor=price.package_amount_minor,
        included_quantity=price.included_quantity,
        minimum_minor=price.minimum_minor,
    )


def plan_price_specs(plan: PricePlan) -> dict[int, PriceSpec]:
    """Meter id -> PriceSpec for every price of a plan version, in two queries."""
    prices = plan.prices.prefetch_related("tiers")
    return {price.meter_id: price_spec(price) for price in prices}


def describe_pricing(spec: PriceSpec | None, rated: RatedLine | None) -> dict[str, Any]:
    """A JSON-able record of the price and the portions applied, for documents and emails."""
    if spec is None or rated is None:
        return {"model": None}
    return {
        "model": spec.model,
        "included_quantity": str(spec.included_quantity),
        "minimum_minor": spec.minimum_minor,
        "unit_amount_minor": (
            None if spec.unit_amount_minor is None else str(spec.unit_amount_minor)
        ),
        "package_size": None if spec.package_size is None else str(spec.package_size),
        "package_amount_minor": spec.package_amount_minor,
        "billable_quantity": str(rated.billable_quantity),
        "minimum_applied": rated.minimum_applied,
        "portions": [
            {
                "tier": None if p.tier_index is None else p.tier_index + 1,
                "quantity": str(p.quantity),
                "unit_amount_minor": str(p.unit_amount_minor),
                "flat_amount_minor": p.flat_amount_minor,
                "packages": p.packages,
            }
            for p in rated.portions
        ],
    }


@dataclass
class LineDraft:
    """A line before it is stored: what the invoice, preview and summary all show."""

    kind: str  # usage | adjustment | cap_credit
    meter: Meter | None
    description: str
    quantity: Decimal
    amount_minor: int
    pricing: dict[str, Any] = field(default_factory=dict)
    aggregate_id: int | None = None
    source_period_id: int | None = None


def usage_line(*, meter: Meter, spec: PriceSpec | None, quantity: Decimal) -> LineDraft:
    """The line for a meter's usage over a period; an unpriced meter costs 0."""
    rated = rate_line(spec, quantity) if spec is not None else None
    return LineDraft(
        kind="usage",
        meter=meter,
        description=meter.name,
        quantity=quantity,
        amount_minor=rated.amount_minor if rated else 0,
        pricing=describe_pricing(spec, rated),
    )


def adjustment_line(
    *,
    meter: Meter,
    spec: PriceSpec | None,
    previous: Decimal,
    cumulative: Decimal,
    label: str,
) -> LineDraft:
    """Late usage of an earlier period, rated at the margin: rate(new total) - rate(old total).

    Rating the late quantity alone would grant the included units and the lower tiers a second
    time; the difference of the two totals bills exactly what the period would have cost.
    """
    if spec is None:
        amount, rated = 0, None
    else:
        rated = rate_line(spec, cumulative)
        amount = rated.amount_minor - rate_line(spec, previous).amount_minor
    return LineDraft(
        kind="adjustment",
        meter=meter,
        description=f"{meter.name}: usage from {label} received late",
        quantity=cumulative - previous,
        amount_minor=amount,
        pricing=describe_pricing(spec, rated),
    )
