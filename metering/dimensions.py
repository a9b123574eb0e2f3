"""Event dimensions (DESIGN 4a): how a property's value reads as text, and a group's key.

A rate card groups a meter's usage per distinct combination of some properties' values. The
values compare as text: a JSON scalar written as JSON (`true` -> "true", `5` -> "5", `2.5` ->
"2.5"), a string as itself, an explicit null (or a missing property) as absent (None). The
database reads values the same way when it groups events (`aggregations.property_text`);
`value_text` is that rule in Python. Pure (the standard library only).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal

# A group's values, in the price's dimension order (None: absent).
Values = tuple[str | None, ...]


def value_text(value: object) -> str | None:
    """A property's value as the text dimensions compare (None: absent or null)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, float):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def values_of(properties: Mapping[str, object], names: Sequence[str]) -> Values:
    """The group of an event with these properties, for dimensions `names`."""
    return tuple(value_text(properties.get(name)) for name in names)


def dimension_key(values: Values) -> str:
    """A group's name in UsageAggregate's unique constraint: "" for no dimensions, else a
    digest of the values (bounded, whatever the values' length)."""
    if not values:
        return ""
    return hashlib.sha256(json.dumps(list(values)).encode()).hexdigest()


def describe_values(names: Sequence[str], values: Values) -> str:
    """ "model=large, token_type=output" (an absent value: "model=(none)")."""
    return ", ".join(
        f"{name}={'(none)' if value is None else value}"
        for name, value in zip(names, values, strict=True)
    )


def names_text(names: Sequence[str]) -> str:
    """Dimension names as an hourly rollup row stores them ("" for none): JSON text."""
    return json.dumps(list(names)) if names else ""


def rollup_group_key(names: Sequence[str], values: Values) -> str:
    """A rollup row's group in its unique constraint: "" for no dimensions, else a digest of
    the names and the values (another list of names is another group)."""
    if not names:
        return ""
    return hashlib.sha256(json.dumps([list(names), list(values)]).encode()).hexdigest()
