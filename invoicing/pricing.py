"""From stored prices to the rating engine's PriceSpec, lines drafted with it, and the one
record and description of how a line was priced.

Everything that shows a money amount for usage (the invoice, the usage API, the allowance, the
budget check, the summary) drafts its lines here, so they all rate the same way. Each line
carries a `PricingRecord` (stored as `InvoiceLine.pricing`, JSON), and everything that tells
people how a line was priced (the invoice document, the summary e-mail, the portal) words it
with `describe_price`, so they all say the same thing in the currency's terms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from invoicing.models import (
    InvoiceLine,
    Price,
    PricePlan,
    PriceRate,
    PriceRateTier,
    PriceTier,
)
from invoicing.rate_cards import RateCard, Rule, match_rule
from invoicing.rating import (
    GRADUATED,
    PACKAGE,
    PER_UNIT,
    VOLUME,
    PriceSpec,
    RatedLine,
    Tier,
    rate_line,
)
from metering.currencies import format_minor, format_unit_amount
from metering.dimensions import Values, describe_values
from metering.models import Meter
from metering.units import format_quantity

# How a plan prices one meter: an ordinary price, or a rate card (DESIGN 4a).
MeterPrice = PriceSpec | RateCard


def price_spec(price: Price | PriceRate) -> PriceSpec:
    """The rating engine's view of a stored price or rate card rule (tiers in position order)."""
    stored: list[PriceTier | PriceRateTier] = list(price.tiers.all())
    tiers = tuple(
        Tier(
            up_to=tier.up_to,
            unit_amount_minor=tier.unit_amount_minor,
            flat_amount_minor=tier.flat_amount_minor,
        )
        for tier in sorted(stored, key=lambda t: t.position)
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


def meter_price(price: Price) -> MeterPrice:
    """A stored price as the rating sees it: its PriceSpec, or its rate card (rules in order)."""
    if not price.dimensions:
        return price_spec(price)
    return RateCard(
        dimensions=tuple(price.dimensions),
        rules=tuple(
            Rule(match=tuple(rate.match.items()), spec=price_spec(rate))
            for rate in sorted(price.rates.all(), key=lambda r: r.position)
        ),
    )


def plan_price_specs(plan: PricePlan) -> dict[int, MeterPrice]:
    """Meter id -> its price (PriceSpec or RateCard) for every price of a plan version, in
    four queries."""
    prices = plan.prices.prefetch_related("tiers", "rates__tiers")
    return {price.meter_id: meter_price(price) for price in prices}


def price_dimensions(prices: Mapping[int, MeterPrice]) -> dict[int, tuple[str, ...]]:
    """Meter id -> dimension names, for the rate cards among a plan's prices: what the
    aggregation groups by (metering.aggregations.measure_groups)."""
    return {pk: p.dimensions for pk, p in prices.items() if isinstance(p, RateCard)}


@dataclass(frozen=True)
class GroupPrice:
    """How one group of a meter's usage is priced: the spec that rates it (None: nothing
    does), and for a rate card the group's values and the rule that matched."""

    spec: PriceSpec | None
    dimensions: tuple[tuple[str, str | None], ...] = ()
    rule: tuple[tuple[str, str], ...] | None = None
    rule_index: int | None = None
    unpriced: bool = False  # a rate card's group that no rule matches (DESIGN 4a)


def group_price(price: MeterPrice | None, values: Values = ()) -> GroupPrice:
    """The price of a group: an ordinary price prices its meter's one group (values ());
    a rate card the group of `values` by its first matching rule (rate_cards.match_rule).
    Every line drafted and every amount checked goes through here."""
    if not isinstance(price, RateCard):
        return GroupPrice(spec=price)
    named = tuple(price.named(values).items()) if values else ()
    if not values:
        # Usage of a rate card's meter outside any group cannot happen (the aggregation
        # groups every event of it); rate it as unpriced rather than at some rule.
        return GroupPrice(spec=None, unpriced=True)
    found = match_rule(price, values)
    if found is None:
        return GroupPrice(spec=None, dimensions=named, unpriced=True)
    index, rule = found
    return GroupPrice(spec=rule.spec, dimensions=named, rule=rule.match, rule_index=index)


def rate_group(price: MeterPrice | None, values: Values, quantity: Decimal) -> int:
    """A group's amount in minor units: its rule's rate_line (0: unpriced or no price)."""
    found = group_price(price, values)
    return rate_line(found.spec, quantity).amount_minor if found.spec is not None else 0


# --- The record of how a line was priced (InvoiceLine.pricing) -------------------------------


@dataclass(frozen=True)
class PricedPortion:
    """One priced piece of a rated line: a tier reached, or the whole line."""

    tier: int | None  # the tier's number, from 1; None for per_unit and package
    quantity: Decimal  # billable meter units inside this portion
    unit_amount_minor: Decimal  # in minor units per unit (per package for the package model)
    flat_amount_minor: int = 0  # flat fee charged with this portion, in minor units
    packages: int | None = None  # started packages billed (package model only)


@dataclass(frozen=True)
class PricingRecord:
    """How one line was priced: the price's terms and the portions the rating applied.

    Three shapes share it: a rated line (`model` set), a line with no price (`model` None), and
    a budget cap credit (`cap_minor` set, `model` None). An adjustment line's record is its
    source period's new total rated (the line bills the change in that total's amount).
    `dimensions` and `rule` are for prices by event dimension: the line's dimension values,
    and the `match` of the rate-card rule that priced it (None: the price has no rules) with
    its number in the card (`rule_position`, from 1; records written before it have none).
    """

    model: str | None = None  # one of rating.PRICE_MODELS; None: not priced, or a cap credit
    included_quantity: Decimal = Decimal(0)  # free meter units per period
    minimum_minor: int = 0  # the least the line costs, in minor units
    unit_amount_minor: Decimal | None = None  # per_unit: minor units per unit
    package_size: Decimal | None = None  # package: meter units per package
    package_amount_minor: int | None = None  # package: minor units per started package
    billable_quantity: Decimal = Decimal(0)  # usage less the included units, in meter units
    minimum_applied: bool = False  # the minimum raised the rated amount
    portions: tuple[PricedPortion, ...] = ()  # empty when nothing is billable
    cap_minor: int | None = None  # cap credit: the period's budget cap, in minor units
    uncapped_minor: int | None = None  # cap credit: the usage rated before the cap
    # cap credit: usage acknowledged under an earlier cap of the period, billed beyond this one
    acknowledged_minor: int | None = None
    dimensions: tuple[tuple[str, str | None], ...] = ()  # (name, value), in the price's order
    rule: tuple[tuple[str, str], ...] | None = None  # the matching rule's `match` entries
    rule_position: int | None = None  # that rule's number in the card, from 1 (None: unknown)

    @classmethod
    def from_rating(cls, spec: PriceSpec | None, rated: RatedLine | None) -> PricingRecord:
        """The record of a line rated with `spec` (a line of an unpriced meter: no price)."""
        if spec is None or rated is None:
            return cls()
        return cls(
            model=spec.model,
            included_quantity=spec.included_quantity,
            minimum_minor=spec.minimum_minor,
            unit_amount_minor=spec.unit_amount_minor,
            package_size=spec.package_size,
            package_amount_minor=spec.package_amount_minor,
            billable_quantity=rated.billable_quantity,
            minimum_applied=rated.minimum_applied,
            portions=tuple(
                PricedPortion(
                    tier=None if p.tier_index is None else p.tier_index + 1,
                    quantity=p.quantity,
                    unit_amount_minor=p.unit_amount_minor,
                    flat_amount_minor=p.flat_amount_minor,
                    packages=p.packages,
                )
                for p in rated.portions
            ),
        )

    @classmethod
    def cap_credit(
        cls, *, cap_minor: int, uncapped_minor: int, acknowledged_minor: int | None = None
    ) -> PricingRecord:
        """The record of a cap credit line: the cap, what the usage came to before it, and the
        usage acknowledged under an earlier cap, billed beyond this one (None: none)."""
        return cls(
            cap_minor=cap_minor,
            uncapped_minor=uncapped_minor,
            acknowledged_minor=acknowledged_minor,
        )

    def to_json(self) -> dict[str, Any]:
        """The stored form (`InvoiceLine.pricing`): decimals as exact strings, amounts as ints.

        Unchanged since the first close, so every stored row reads back with `from_json`;
        `dimensions` and `rule` are written only when a line has them.
        """
        if self.cap_minor is not None:
            data: dict[str, Any] = {"cap_minor": self.cap_minor}
            if self.uncapped_minor is not None:
                data["uncapped_minor"] = self.uncapped_minor
            if self.acknowledged_minor is not None:
                data["acknowledged_minor"] = self.acknowledged_minor
        elif self.model is None:
            data = {"model": None}
        else:
            data = {
                "model": self.model,
                "included_quantity": str(self.included_quantity),
                "minimum_minor": self.minimum_minor,
                "unit_amount_minor": _text_or_none(self.unit_amount_minor),
                "package_size": _text_or_none(self.package_size),
                "package_amount_minor": self.package_amount_minor,
                "billable_quantity": str(self.billable_quantity),
                "minimum_applied": self.minimum_applied,
                "portions": [
                    {
                        "tier": p.tier,
                        "quantity": str(p.quantity),
                        "unit_amount_minor": str(p.unit_amount_minor),
                        "flat_amount_minor": p.flat_amount_minor,
                        "packages": p.packages,
                    }
                    for p in self.portions
                ],
            }
        if self.dimensions:
            data["dimensions"] = dict(self.dimensions)
        if self.rule is not None:
            data["rule"] = {"match": dict(self.rule)}
            if self.rule_position is not None:
                data["rule"]["position"] = self.rule_position
        return data

    @classmethod
    def from_json(cls, data: object) -> PricingRecord:
        """A stored record read back: every shape written so far (a rated line, `{"model":
        null}`, a cap credit with or without `uncapped_minor` and `acknowledged_minor`, the
        empty default `{}`), numbers as strings or JSON numbers. Anything that is not an
        object reads as no price."""
        if not isinstance(data, Mapping):
            return cls()
        portions = data.get("portions")
        dimensions = data.get("dimensions")
        rule = data.get("rule")
        match = rule.get("match") if isinstance(rule, Mapping) else None
        return cls(
            model=None if data.get("model") is None else str(data["model"]),
            included_quantity=_decimal(data.get("included_quantity")) or Decimal(0),
            minimum_minor=_int(data.get("minimum_minor")) or 0,
            unit_amount_minor=_decimal(data.get("unit_amount_minor")),
            package_size=_decimal(data.get("package_size")),
            package_amount_minor=_int(data.get("package_amount_minor")),
            billable_quantity=_decimal(data.get("billable_quantity")) or Decimal(0),
            minimum_applied=data.get("minimum_applied") is True,
            portions=tuple(
                PricedPortion(
                    tier=_int(p.get("tier")),
                    quantity=_decimal(p.get("quantity")) or Decimal(0),
                    unit_amount_minor=_decimal(p.get("unit_amount_minor")) or Decimal(0),
                    flat_amount_minor=_int(p.get("flat_amount_minor")) or 0,
                    packages=_int(p.get("packages")),
                )
                for p in (portions if isinstance(portions, list) else [])
                if isinstance(p, Mapping)
            ),
            cap_minor=_int(data.get("cap_minor")),
            uncapped_minor=_int(data.get("uncapped_minor")),
            acknowledged_minor=_int(data.get("acknowledged_minor")),
            dimensions=tuple(
                (str(name), None if value is None else str(value))
                for name, value in (dimensions.items() if isinstance(dimensions, Mapping) else ())
            ),
            rule=(
                None
                if not isinstance(match, Mapping)
                else tuple((str(name), str(value)) for name, value in match.items())
            ),
            rule_position=_int(rule.get("position")) if isinstance(rule, Mapping) else None,
        )


def _text_or_none(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _decimal(value: object) -> Decimal | None:
    """A stored number (an exact string, or a JSON number) as a Decimal; None when absent."""
    if value is None or isinstance(value, bool):
        return None
    return Decimal(str(value))


def _int(value: object) -> int | None:
    """A stored amount in minor units (an int, or its text) as an int; None when absent."""
    if value is None or isinstance(value, bool):
        return None
    return int(str(value))


# --- Lines drafted with a price -------------------------------------------------------------


@dataclass
class LineDraft:
    """A line before it is stored: what the invoice, preview and summary all show."""

    kind: str  # usage | adjustment | cap_credit
    meter: Meter | None
    description: str
    quantity: Decimal
    amount_minor: int
    pricing: PricingRecord = field(default_factory=PricingRecord)
    aggregate_id: int | None = None
    source_period_id: int | None = None
    resolution_id: int | None = None  # an unpriced line's "bill" (UnpricedResolution) it bills

    @property
    def dimensions(self) -> dict[str, str | None] | None:
        """The group's values by dimension name; None for a line of an ordinary price."""
        return dict(self.pricing.dimensions) if self.pricing.dimensions else None


def _record(found: GroupPrice, rated: RatedLine | None) -> PricingRecord:
    record = PricingRecord.from_rating(found.spec, rated)
    if found.dimensions or found.rule is not None:
        position = None if found.rule_index is None else found.rule_index + 1
        record = replace(
            record, dimensions=found.dimensions, rule=found.rule, rule_position=position
        )
    return record


def group_description(meter: Meter, found: GroupPrice) -> str:
    """A line's name: the meter's, and a group's values ("LLM tokens — model=large,
    token_type=output"), so everything that prints a description names them."""
    if not found.dimensions:
        return meter.name
    names = [name for name, _ in found.dimensions]
    values = tuple(value for _, value in found.dimensions)
    return f"{meter.name} — {describe_values(names, values)}"


def usage_line(
    *, meter: Meter, spec: MeterPrice | None, quantity: Decimal, values: Values = ()
) -> LineDraft:
    """The line for one group of a meter's usage over a period (an ordinary price: the
    meter's one group); a meter without a price costs 0, a rate card's group that no rule
    matches is an `unpriced` line of 0."""
    found = group_price(spec, values)
    rated = rate_line(found.spec, quantity) if found.spec is not None else None
    return LineDraft(
        kind=InvoiceLine.Kind.UNPRICED if found.unpriced else InvoiceLine.Kind.USAGE,
        meter=meter,
        description=group_description(meter, found),
        quantity=quantity,
        amount_minor=rated.amount_minor if rated else 0,
        pricing=_record(found, rated),
    )


def adjustment_line(
    *,
    meter: Meter,
    spec: MeterPrice | None,
    previous: Decimal,
    cumulative: Decimal,
    label: str,
    values: Values = (),
) -> LineDraft:
    """Late usage of an earlier period, rated at the margin: rate(new total) - rate(old total).

    Rating the late quantity alone would grant the included units and the lower tiers a second
    time; the difference of the two totals bills exactly what the period would have cost. A
    rate card's group is rated at its own margin; a group no rule matches stays `unpriced`.
    """
    found = group_price(spec, values)
    if found.spec is None:
        amount, rated = 0, None
    else:
        rated = rate_line(found.spec, cumulative)
        amount = rated.amount_minor - rate_line(found.spec, previous).amount_minor
    return LineDraft(
        kind=InvoiceLine.Kind.UNPRICED if found.unpriced else InvoiceLine.Kind.ADJUSTMENT,
        meter=meter,
        description=f"{group_description(meter, found)}: usage from {label} received late",
        quantity=cumulative - previous,
        amount_minor=amount,
        pricing=_record(found, rated),
    )


# --- The one description of a price, for people ---------------------------------------------


_MODEL_LABELS = {GRADUATED: "Graduated tiers", VOLUME: "Volume tiers"}


def describe_price(pricing: PricingRecord, *, kind: str, unit: str, currency: str) -> str:
    """How a line was priced, in one sentence in the currency's terms, for people.

    The invoice document, the summary e-mail and the portal all show this text, so they
    always agree. `kind` is the line's (an adjustment's record rates its period's new total);
    `unit` is the meter's unit label ("" for a line without a meter). For example:
    "$0.00002 per token; first 100,000 tokens included",
    "Graduated tiers: 1,000,000 tokens at $0.00002 (tier 1), 400,000.5 tokens at $0.00001
    (tier 2)", "$1.50 per 60 minutes, rounded up: 2 packages; minimum $5.00 applied",
    "Budget cap $20.00; usage rated at $29.15 before the cap".
    """
    if pricing.cap_minor is not None:
        text = f"Budget cap {format_minor(pricing.cap_minor, currency)}"
        if pricing.acknowledged_minor is not None:
            acknowledged = format_minor(pricing.acknowledged_minor, currency)
            text += f", set after {acknowledged} of acknowledged usage (billed)"
        if pricing.uncapped_minor is not None:
            uncapped = format_minor(pricing.uncapped_minor, currency)
            text += f"; usage rated at {uncapped} before the cap"
        return text
    if pricing.model is None:
        return "Not priced"
    clauses = [_terms(pricing, unit=unit, currency=currency)]
    if pricing.included_quantity > 0:
        clauses.append(f"first {format_quantity(pricing.included_quantity, unit)} included")
    if pricing.minimum_minor > 0:
        minimum = f"minimum {format_minor(pricing.minimum_minor, currency)}"
        clauses.append(f"{minimum} applied" if pricing.minimum_applied else minimum)
    if kind == InvoiceLine.Kind.ADJUSTMENT:
        clauses.append("rated on the new total of the period, less what was billed for it before")
    text = "; ".join(clauses)
    return text[:1].upper() + text[1:]


def describe_line_price(line: InvoiceLine, *, currency: str) -> str:
    """`describe_price` for a stored line: its record read back, its meter's unit."""
    return describe_price(
        PricingRecord.from_json(line.pricing),
        kind=line.kind,
        unit=line.meter.unit if line.meter is not None else "",
        currency=currency,
    )


def _terms(pricing: PricingRecord, *, unit: str, currency: str) -> str:
    """The price model's own clause: the unit price, the packages, or the tiers reached."""
    if pricing.model == PER_UNIT and pricing.unit_amount_minor is not None:
        return f"{format_unit_amount(pricing.unit_amount_minor, currency)} per {unit or 'unit'}"
    if (
        pricing.model == PACKAGE
        and pricing.package_size is not None
        and pricing.package_amount_minor is not None
    ):
        size = format_quantity(pricing.package_size, unit)
        text = f"{format_minor(pricing.package_amount_minor, currency)} per {size}, rounded up"
        packages = sum(p.packages or 0 for p in pricing.portions)
        if packages:
            text += f": {packages} package{'' if packages == 1 else 's'}"
        return text
    label = _MODEL_LABELS.get(str(pricing.model), str(pricing.model).replace("_", " "))
    reached = [_portion_text(p, unit=unit, currency=currency) for p in pricing.portions]
    return f"{label}: {', '.join(reached)}" if reached else label


def _portion_text(portion: PricedPortion, *, unit: str, currency: str) -> str:
    """A tier reached: "400,000.5 tokens at $0.00001 plus $1.00 flat (tier 2)"."""
    text = (
        f"{format_quantity(portion.quantity, unit)} at "
        f"{format_unit_amount(portion.unit_amount_minor, currency)}"
    )
    if portion.flat_amount_minor:
        text += f" plus {format_minor(portion.flat_amount_minor, currency)} flat"
    return text if portion.tier is None else f"{text} (tier {portion.tier})"
