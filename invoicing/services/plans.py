"""Price plans: created as versions; a new version applies from the next period.

A plan version is immutable once a billing period uses it (the prices of a period are kept
in each process for minutes, see selectors.period_price_specs): its row, prices and tiers are
never changed, added to or deleted. ensure_plan_version_editable is the check every write to
an existing version goes through (the admin's forms), and the database refuses the same
changes from any other path (triggers, migration invoicing 0009).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from http import HTTPStatus

from django.db import transaction

from audit.services import record_audit
from billing_project.errors import DomainError
from invoicing import selectors
from invoicing.models import Price, PricePlan, PriceRate, PriceRateTier, PriceTier, Subscription
from invoicing.pricing import meter_price
from invoicing.rate_cards import RateCard, validate_rate_card
from invoicing.rating import PriceSpec, Tier, validate_price_spec
from metering.models import Meter


class PlanInvalid(DomainError):
    """The plan cannot be stored (422); `errors` maps a field path to its message."""

    code = "invalid_plan"

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(fields=errors)
        self.errors = errors


class PlanVersionInUse(DomainError):
    """A billing period uses this plan version: it cannot change (409; create a new version)."""

    status = HTTPStatus.CONFLICT
    code = "plan_version_in_use"


def ensure_plan_version_editable(*, plan_id: int) -> PricePlan:
    """Lock a plan version for the rest of the transaction and refuse (PlanVersionInUse) if a
    billing period uses it; call it first in any transaction that changes the version, its
    prices or its tiers.

    The lock (FOR UPDATE) conflicts with the key-share lock that a new period's foreign key
    takes when it commits, so a period created meanwhile waits for this transaction: the
    check cannot be raced.
    """
    plan = PricePlan.objects.select_for_update().get(pk=plan_id)
    if selectors.plan_in_use(plan=plan):
        raise PlanVersionInUse(
            f"{plan} is used by billing periods and cannot change: use “Copy as new version” "
            "(or POST the plan again) to create a new version; subscribers move to it from "
            "their next period"
        )
    return plan


@dataclass(frozen=True)
class PriceInput:
    """An ordinary price (`spec`), or a rate card (`dimensions` and `rates`: (match, spec)
    rules in order, DESIGN 4a; `spec` None)."""

    meter: str  # meter code
    spec: PriceSpec | None
    dimensions: tuple[str, ...] = ()
    rates: tuple[tuple[dict[str, object], PriceSpec], ...] = ()


@transaction.atomic
def create_plan_version(
    *,
    code: str,
    name: str,
    currency: str,
    interval: str,
    prices: list[PriceInput],
    user: object = None,
) -> PricePlan:
    """Store a plan as the next version of its code and move its subscribers to it.

    Subscribers' current periods keep the version they were created with; the new version
    applies from each customer's next period.
    """
    errors: dict[str, str] = {}
    meters = {m.code: m for m in Meter.objects.filter(code__in=[p.meter for p in prices])}
    seen: set[str] = set()
    for index, item in enumerate(prices):
        if item.meter not in meters:
            errors[f"prices[{index}].meter"] = f"unknown meter {item.meter!r}"
        elif item.meter in seen:
            errors[f"prices[{index}].meter"] = f"meter {item.meter!r} is priced twice"
        seen.add(item.meter)
        if item.spec is None:
            for path, message in validate_rate_card(item.dimensions, item.rates).items():
                errors[f"prices[{index}].{path}"] = message
            continue
        problems = validate_price_spec(item.spec)
        if problems:
            errors[f"prices[{index}]"] = "; ".join(problems)
    if errors:
        raise PlanInvalid(errors)

    # Lock the existing versions of the code so two writers cannot take the same number.
    versions = list(
        PricePlan.objects.select_for_update().filter(code=code).values_list("version", flat=True)
    )
    # Subscribers move to the new version below without `subscribe_customer`'s currency check,
    # so a version in another currency would bill them in a currency they do not pay in.
    paid_in = set(
        Subscription.objects.filter(plan__code=code)
        .exclude(customer__currency=currency)
        .values_list("customer__currency", flat=True)
    )
    if paid_in:
        raise PlanInvalid(
            {
                "currency": f"subscribers of {code} pay in {', '.join(sorted(paid_in))}; "
                "a new version must bill in their currency"
            }
        )
    plan = PricePlan.objects.create(
        code=code,
        version=max(versions, default=0) + 1,
        name=name,
        currency=currency,
        interval=interval,
    )
    for item in prices:
        _store_price(plan=plan, meter=meters[item.meter], item=item)
    moved = Subscription.objects.filter(plan__code=code).exclude(plan=plan).update(plan=plan)
    record_audit(
        action="plan.version_created",
        obj=plan,
        user=user,
        data={"code": code, "version": plan.version, "subscriptions_moved": moved},
    )
    return plan


def _store_price(*, plan: PricePlan, meter: Meter, item: PriceInput) -> Price:
    """A price with its tiers, or a rate card with its rules and their tiers, in a version
    created in this transaction (no period uses it)."""
    if item.spec is None:
        price = Price.objects.create(
            plan=plan, meter=meter, model="", dimensions=list(item.dimensions)
        )
        for position, (match, spec) in enumerate(item.rates, start=1):
            rate = PriceRate.objects.create(
                price=price, position=position, match=dict(match), **_spec_fields(spec)
            )
            PriceRateTier.objects.bulk_create(
                PriceRateTier(rate=rate, position=number, **_tier_fields(tier))
                for number, tier in enumerate(spec.tiers, start=1)
            )
        return price
    price = Price.objects.create(plan=plan, meter=meter, **_spec_fields(item.spec))
    PriceTier.objects.bulk_create(
        PriceTier(price=price, position=position, **_tier_fields(tier))
        for position, tier in enumerate(item.spec.tiers, start=1)
    )
    return price


def _spec_fields(spec: PriceSpec) -> dict[str, object]:
    return {
        "model": spec.model,
        "unit_amount_minor": spec.unit_amount_minor,
        "package_size": spec.package_size,
        "package_amount_minor": spec.package_amount_minor,
        "included_quantity": spec.included_quantity,
        "minimum_minor": spec.minimum_minor,
    }


def _tier_fields(tier: Tier) -> dict[str, object]:
    return {
        "up_to": tier.up_to,
        "unit_amount_minor": tier.unit_amount_minor,
        "flat_amount_minor": tier.flat_amount_minor,
    }


def latest_plan(code: str) -> PricePlan | None:
    return PricePlan.objects.filter(code=code).order_by("-version").first()


def stored_price_input(price: Price) -> PriceInput:
    """A stored price (with its tiers, or its rules and theirs) as the input that stores the
    same price again ("Copy as new version")."""
    found = meter_price(price)
    if isinstance(found, RateCard):
        return PriceInput(
            meter=price.meter.code,
            spec=None,
            dimensions=found.dimensions,
            rates=tuple((dict(rule.match), rule.spec) for rule in found.rules),
        )
    return PriceInput(meter=price.meter.code, spec=found)


def price_from_json(data: dict) -> PriceInput:
    """A price of the plan JSON (already type-checked): ordinary, or a rate card (4a)."""
    if "rates" in data:
        return PriceInput(
            meter=data["meter"],
            spec=None,
            dimensions=tuple(data.get("dimensions") or ()),
            rates=tuple(
                (dict(rule.get("match") or {}), spec_from_json(rule)) for rule in data["rates"]
            ),
        )
    return PriceInput(meter=data["meter"], spec=spec_from_json(data))


def spec_from_json(data: dict) -> PriceSpec:
    """Build a PriceSpec from the plan JSON of DESIGN section 4 (already type-checked)."""

    def dec(value: object) -> Decimal | None:
        return None if value is None else Decimal(str(value))

    return PriceSpec(
        model=data["model"],
        unit_amount_minor=dec(data.get("unit_amount_minor")),
        tiers=tuple(
            Tier(
                up_to=dec(t.get("up_to")),
                unit_amount_minor=dec(t.get("unit_amount_minor")) or Decimal(0),
                flat_amount_minor=int(t.get("flat_amount_minor") or 0),
            )
            for t in data.get("tiers") or ()
        ),
        package_size=dec(data.get("package_size")),
        package_amount_minor=data.get("package_amount_minor"),
        included_quantity=dec(data.get("included_quantity")) or Decimal(0),
        minimum_minor=int(data.get("minimum_minor") or 0),
    )
