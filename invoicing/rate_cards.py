"""Rate cards: a price by event dimension (DESIGN section 4a), and the one rule matcher.

A rate card prices one meter by up to three event properties (its `dimensions`) with an
ordered list of rules; each rule is a `match` (some dimensions -> exact text values) and an
ordinary price (`rating.PriceSpec`). Usage is grouped per distinct combination of the
dimensions' values (see metering.aggregations.dimension_group_by); each group is rated by the
first rule whose every `match` entry equals the group's value, with the group's own quantity.
A group that no rule matches is unpriced (`match_rule` returns None).

Values compare as text: a property's JSON scalar written as JSON (`true` -> "true", `5` ->
"5", `2.5` -> "2.5"), a string as itself, an explicit null as absent; an absent value matches
no `match` entry (metering.dimensions.value_text; the database reads them the same way,
metering.aggregations.property_text).

Pure (the standard library, invoicing.rating and metering.dimensions), like the rating engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from invoicing.rating import PriceSpec, validate_price_spec
from metering.dimensions import Values, value_text, values_of

MAX_DIMENSIONS = 3
MAX_RULES = 200
MAX_VALUE_LENGTH = 200  # characters of a `match` value

__all__ = ["RateCard", "Rule", "Values", "match_rule", "validate_rate_card", "value_text"]


@dataclass(frozen=True)
class Rule:
    """One rule of a rate card: the values it matches and the price it applies."""

    match: tuple[tuple[str, str], ...]  # (dimension, value), in the author's order
    spec: PriceSpec

    def matches(self, values: Mapping[str, str | None]) -> bool:
        """Whether every `match` entry equals the group's value (absent matches nothing)."""
        return all(values.get(name) == value for name, value in self.match)


@dataclass(frozen=True)
class RateCard:
    """A price by event dimension: its dimension names and its rules, in order."""

    dimensions: tuple[str, ...]
    rules: tuple[Rule, ...]

    def named(self, values: Values) -> dict[str, str | None]:
        """A group's values keyed by dimension name (the API's `dimensions` object)."""
        return dict(zip(self.dimensions, values, strict=True))


def match_rule(card: RateCard, values: Values) -> tuple[int, Rule] | None:
    """The first rule (its index and itself) matching a group's values; None: unpriced."""
    named = card.named(values)
    for index, rule in enumerate(card.rules):
        if rule.matches(named):
            return index, rule
    return None


def group_values(card: RateCard, properties: Mapping[str, object]) -> Values:
    """The group of an event with these properties (for tests and callers holding events)."""
    return values_of(properties, card.dimensions)


def validate_rate_card(
    dimensions: Sequence[object], rules: Sequence[tuple[Mapping[str, object], PriceSpec]]
) -> dict[str, str]:
    """Every problem with a rate card, by field path relative to the price ("dimensions[1]",
    "rates[2].match", "rates[0].tiers[0].up_to"); empty means valid."""
    errors: dict[str, str] = {}
    names: list[str] = []
    if not 1 <= len(dimensions) <= MAX_DIMENSIONS:
        errors["dimensions"] = f"give 1 to {MAX_DIMENSIONS} property names"
    for index, name in enumerate(dimensions):
        if not isinstance(name, str) or not name or len(name) > 64:
            errors[f"dimensions[{index}]"] = "a property name of 1 to 64 characters"
        elif name in names:
            errors[f"dimensions[{index}]"] = f"dimension {name!r} is named twice"
        else:
            names.append(name)
    if not rules:
        errors["rates"] = "a price with dimensions needs at least one rule in rates"
    elif len(rules) > MAX_RULES:
        errors["rates"] = f"at most {MAX_RULES} rules"
    for index, (match, spec) in enumerate(rules):
        where = f"rates[{index}]"
        if not match and index != len(rules) - 1:
            errors[f"{where}.match"] = "the catch-all {} may only be the last rule"
        for key, value in match.items():
            if key not in names:
                errors[f"{where}.match.{key}"] = (
                    f"{key!r} is not one of the dimensions {', '.join(names) or '(none)'}"
                )
            elif not isinstance(value, str):
                errors[f"{where}.match.{key}"] = "match values are strings"
            elif len(value) > MAX_VALUE_LENGTH:
                errors[f"{where}.match.{key}"] = f"at most {MAX_VALUE_LENGTH} characters"
        errors.update(spec_errors(spec, prefix=where))
    return errors


def spec_errors(spec: PriceSpec, *, prefix: str) -> dict[str, str]:
    """`validate_price_spec`'s messages keyed by field path under `prefix` (a message that
    names a field, "tiers[0].up_to must ...", is keyed by it; others by the model)."""
    errors: dict[str, str] = {}
    for message in validate_price_spec(spec):
        field = message.split(" ", 1)[0]
        key = f"{prefix}.{field}" if _is_field(field) else f"{prefix}.model"
        errors[key] = f"{errors[key]}; {message}" if key in errors else message
    return errors


_FIELDS = (
    "model",
    "unit_amount_minor",
    "tiers",
    "package_size",
    "package_amount_minor",
    "included_quantity",
    "minimum_minor",
)


def _is_field(text: str) -> bool:
    return text.split("[", 1)[0].split(".", 1)[0] in _FIELDS
