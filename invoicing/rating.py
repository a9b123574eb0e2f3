"""The one rating engine: turns a price and a period's usage quantity into a line amount.

DESIGN section 4 is the contract. Everything here is pure (the standard library only),
so the dashboard, the allowance, the cap check, the usage summary and the invoice all call the
same code and always agree to the minor unit.

Rating works in three steps, and there is exactly one code path for them (`rate_line`):

1. ``included_quantity`` is subtracted from the usage (never below 0), giving the billable
   quantity ``q``.
2. The price model turns ``q`` into one or more portions (a tier, or the whole line), each with an
   exact ``Decimal`` subtotal in minor units. The arithmetic runs in a local context with 60
   significant digits and the ``Inexact`` signal trapped, so a result that cannot be represented
   exactly raises instead of being rounded silently. Floats are refused everywhere.
3. The exact sum is rounded once, half-up, to an integer number of minor units; then
   ``minimum_minor`` raises it if it falls short.

Decisions the design leaves open:

- ``q = 0`` bills nothing before the minimum in every model. For ``volume`` the zero quantity
  falls in the first tier, but that tier's flat amount applies only when ``q > 0``; for
  ``graduated`` no tier is reached (a tier is reached when ``q`` exceeds the previous bound).
  So "q = 0 with no minimum costs 0", and with a minimum the line costs the minimum.
- A portion list (``rate_breakdown``) is empty when ``q = 0``.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import TypeVar

PER_UNIT = "per_unit"
GRADUATED = "graduated"
VOLUME = "volume"
PACKAGE = "package"
PRICE_MODELS: tuple[str, ...] = (PER_UNIT, GRADUATED, VOLUME, PACKAGE)
TIERED_MODELS: tuple[str, ...] = (GRADUATED, VOLUME)

# Unit prices are in minor units with at most this many decimal places (Stripe's
# `unit_amount_decimal` allows 12), since per-token prices are tiny.
MAX_UNIT_AMOUNT_PLACES = 12
# Flat, package and minimum amounts are stored as bigint minor units: at most 10^15 (as a
# budget cap), far inside the column and any real price.
MAX_AMOUNT_MINOR = 10**15

# Significant digits of the exact arithmetic. Quantities reach 10^12 with 6 places (18 digits)
# and unit prices carry 12 places, so products fit comfortably; anything that does not raises.
_PRECISION = 60

_T = TypeVar("_T")


def _exact_context() -> decimal.Context:
    """Return a context in which any rounding of an intermediate result raises `Inexact`."""
    return decimal.Context(
        prec=_PRECISION,
        rounding=ROUND_HALF_UP,
        traps=[
            decimal.InvalidOperation,
            decimal.DivisionByZero,
            decimal.Overflow,
            decimal.Inexact,
        ],
    )


@dataclass(frozen=True)
class Tier:
    """One tier of a graduated or volume price.

    ``up_to`` is the inclusive upper bound of the tier in meter units; ``None`` marks the last,
    open tier.
    """

    up_to: Decimal | None  # inclusive upper bound, in meter units; None = open
    unit_amount_minor: Decimal  # price per unit, in minor units (up to 12 decimal places)
    flat_amount_minor: int = 0  # charged once when the tier applies, in minor units


@dataclass(frozen=True)
class PriceSpec:
    """How one meter is priced: the model and its parameters, as a plan stores them."""

    model: str  # one of PRICE_MODELS
    unit_amount_minor: Decimal | None = None  # per_unit: price per unit, in minor units
    tiers: tuple[Tier, ...] = ()  # graduated and volume
    package_size: Decimal | None = None  # package: meter units per package
    package_amount_minor: int | None = None  # package: price per started package, in minor units
    included_quantity: Decimal = Decimal(0)  # free meter units per period, subtracted first
    minimum_minor: int = 0  # the least a line costs per period, in minor units


@dataclass(frozen=True)
class RatedPortion:
    """One priced piece of a line, as an invoice document shows it.

    ``per_unit`` and ``package`` lines have one portion with ``tier_index=None``; ``graduated``
    lines have one per tier reached; ``volume`` lines have one, for the tier ``q`` falls in.
    """

    tier_index: int | None  # index into PriceSpec.tiers; None for per_unit and package
    quantity: Decimal  # billable quantity inside this portion, in meter units
    unit_amount_minor: Decimal  # in minor units per unit (per package for the package model)
    flat_amount_minor: int  # flat fee charged with this portion, in minor units
    packages: int | None  # started packages billed (package model only); None otherwise
    subtotal_minor: Decimal  # exact, unrounded amount of this portion, in minor units


@dataclass(frozen=True)
class RatedLine:
    """The full result of rating one line: the billable quantity, its portions and the amounts."""

    billable_quantity: Decimal  # usage minus included quantity, never below 0, in meter units
    portions: tuple[RatedPortion, ...]  # empty when nothing is billable
    exact_minor: Decimal  # exact sum of the portion subtotals, in minor units
    rounded_minor: int  # exact_minor rounded once, half-up, in minor units
    amount_minor: int  # rounded_minor raised to the price's minimum, in minor units

    @property
    def minimum_applied(self) -> bool:
        """Whether the minimum charge raised this line above its rated amount."""
        return self.amount_minor > self.rounded_minor


def round_half_up(amount_minor: Decimal) -> int:
    """Round an exact amount in minor units to an integer, half away from zero.

    This is the one rounding step of rating; it is exact for any finite ``Decimal`` (it never
    consults the context's precision).
    """
    if not amount_minor.is_finite():
        raise ValueError(f"cannot round a non-finite amount: {amount_minor}")
    return int(amount_minor.to_integral_value(rounding=ROUND_HALF_UP))


def validate_price_spec(spec: PriceSpec) -> list[str]:
    """Return every problem with a price spec as a human-readable message; empty means valid.

    The admin, the plans API and ``rate`` all use this, so a price that is stored can always be
    rated. Fields that the model does not use must be left empty, because a stray unit price on a
    tiered price is almost always a mistake that would otherwise be ignored silently.
    """
    errors: list[str] = []
    if spec.model not in PRICE_MODELS:
        errors.append(f"model must be one of {', '.join(PRICE_MODELS)}; got {spec.model!r}")
        return errors

    _check_quantity(errors, "included_quantity", spec.included_quantity, allow_zero=True)
    _check_minor(errors, "minimum_minor", spec.minimum_minor)

    if spec.model == PER_UNIT:
        if spec.unit_amount_minor is None:
            errors.append("unit_amount_minor is required for the per_unit model")
        else:
            _check_unit_amount(errors, "unit_amount_minor", spec.unit_amount_minor)
    elif spec.unit_amount_minor is not None:
        errors.append(f"unit_amount_minor must be empty for the {spec.model} model")

    if spec.model in TIERED_MODELS:
        _check_tiers(errors, spec.tiers)
    elif spec.tiers:
        errors.append(f"tiers must be empty for the {spec.model} model")

    if spec.model == PACKAGE:
        if spec.package_size is None:
            errors.append("package_size is required for the package model")
        else:
            _check_quantity(errors, "package_size", spec.package_size, allow_zero=False)
        if spec.package_amount_minor is None:
            errors.append("package_amount_minor is required for the package model")
        else:
            _check_minor(errors, "package_amount_minor", spec.package_amount_minor)
    else:
        if spec.package_size is not None:
            errors.append(f"package_size must be empty for the {spec.model} model")
        if spec.package_amount_minor is not None:
            errors.append(f"package_amount_minor must be empty for the {spec.model} model")
    return errors


def rate_line(price: PriceSpec, quantity: Decimal) -> RatedLine:
    """Rate one line: the period's usage ``quantity`` (meter units) under ``price``.

    Raises ``ValueError`` for an invalid price (see ``validate_price_spec``), a negative or
    non-finite quantity, or an amount too large to compute exactly; ``TypeError`` for a float.
    """
    errors = validate_price_spec(price)
    if errors:
        raise ValueError("invalid price: " + "; ".join(errors))
    usage = _as_decimal("quantity", quantity)
    if usage < 0:
        raise ValueError(f"quantity must be >= 0; got {usage}")

    ctx = _exact_context()
    try:
        q = max(ctx.subtract(usage, price.included_quantity), Decimal(0))
        portions = _portions(price, q, ctx) if q > 0 else ()
        exact = Decimal(0)  # in minor units
        for portion in portions:
            exact = ctx.add(exact, portion.subtotal_minor)
    except (decimal.Inexact, decimal.InvalidOperation) as exc:
        raise ValueError(
            f"amount cannot be computed exactly in {_PRECISION} significant digits"
        ) from exc

    rounded = round_half_up(exact)
    return RatedLine(
        billable_quantity=q,
        portions=portions,
        exact_minor=exact,
        rounded_minor=rounded,
        amount_minor=max(rounded, price.minimum_minor),
    )


def rate(price: PriceSpec, quantity: Decimal) -> int:
    """Return the line amount in minor units for ``quantity`` meter units under ``price``."""
    return rate_line(price, quantity).amount_minor


def rate_breakdown(price: PriceSpec, quantity: Decimal) -> tuple[RatedPortion, ...]:
    """Return the portions (tiers or whole line) that make up the amount, for invoice documents."""
    return rate_line(price, quantity).portions


def _portions(price: PriceSpec, q: Decimal, ctx: decimal.Context) -> tuple[RatedPortion, ...]:
    """Split a positive billable quantity into priced portions with exact subtotals."""
    if price.model == PER_UNIT:
        unit_amount = _required(price.unit_amount_minor, "unit_amount_minor")
        return (_portion(None, q, unit_amount, 0, ctx),)
    if price.model == GRADUATED:
        return _graduated(price.tiers, q, ctx)
    if price.model == VOLUME:
        index = next(i for i, t in enumerate(price.tiers) if t.up_to is None or q <= t.up_to)
        tier = price.tiers[index]
        return (_portion(index, q, tier.unit_amount_minor, tier.flat_amount_minor, ctx),)
    return (_package(price, q, ctx),)


def _graduated(
    tiers: tuple[Tier, ...], q: Decimal, ctx: decimal.Context
) -> tuple[RatedPortion, ...]:
    """Bill the part of ``q`` inside each tier it reaches (``q`` above the previous bound)."""
    portions: list[RatedPortion] = []
    lower = Decimal(0)  # the previous tier's inclusive upper bound, in meter units
    for index, tier in enumerate(tiers):
        if q <= lower:
            break
        upper = q if tier.up_to is None else min(q, tier.up_to)
        inside = ctx.subtract(upper, lower)
        portions.append(
            _portion(index, inside, tier.unit_amount_minor, tier.flat_amount_minor, ctx)
        )
        if tier.up_to is None:
            break
        lower = tier.up_to
    return tuple(portions)


def _package(price: PriceSpec, q: Decimal, ctx: decimal.Context) -> RatedPortion:
    """Bill every started package of ``package_size`` units at ``package_amount_minor``."""
    size = _required(price.package_size, "package_size")  # meter units per package
    amount = _required(price.package_amount_minor, "package_amount_minor")  # in minor units
    whole = ctx.divide_int(q, size)  # exact: the quotient is an integer
    remainder = ctx.remainder(q, size)
    packages = int(whole) + (1 if remainder else 0)
    return RatedPortion(
        tier_index=None,
        quantity=q,
        unit_amount_minor=Decimal(amount),
        flat_amount_minor=0,
        packages=packages,
        subtotal_minor=Decimal(packages * amount),
    )


def _portion(
    tier_index: int | None,
    quantity: Decimal,
    unit_amount_minor: Decimal,
    flat_amount_minor: int,
    ctx: decimal.Context,
) -> RatedPortion:
    """Price ``quantity`` units at ``unit_amount_minor`` plus a flat fee, exactly."""
    subtotal = ctx.add(ctx.multiply(quantity, unit_amount_minor), Decimal(flat_amount_minor))
    return RatedPortion(
        tier_index=tier_index,
        quantity=quantity,
        unit_amount_minor=unit_amount_minor,
        flat_amount_minor=flat_amount_minor,
        packages=None,
        subtotal_minor=subtotal,
    )


def _required(value: _T | None, field: str) -> _T:
    """Return a field that validation guarantees is set; raise if it is not."""
    if value is None:
        raise ValueError(f"{field} is required")
    return value


def _as_decimal(field: str, value: object) -> Decimal:
    """Return ``value`` as a finite Decimal; ints are accepted, floats and bools refused."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{field} must be finite; got {value}")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    raise TypeError(f"{field} must be a Decimal, not {type(value).__name__}")


def _decimal_places(value: Decimal) -> int:
    """Count the significant decimal places of a finite Decimal (trailing zeros do not count)."""
    if not value.is_finite():
        raise ValueError(f"not a finite number: {value}")
    _, digits, raw_exp = value.as_tuple()
    exp = int(raw_exp)  # an int for every finite value
    trailing = 0
    for digit in reversed(digits):
        if digit:
            break
        trailing += 1
    if trailing == len(digits):  # the value is zero
        return 0
    return max(0, -(exp + trailing))


def _finite_decimal(errors: list[str], field: str, value: object) -> Decimal | None:
    """Return ``value`` if it is a finite Decimal; otherwise append an error and return None."""
    if not isinstance(value, Decimal):
        errors.append(f"{field} must be a Decimal, not {type(value).__name__}")
        return None
    if not value.is_finite():
        errors.append(f"{field} must be finite; got {value}")
        return None
    return value


def _check_quantity(errors: list[str], field: str, value: object, *, allow_zero: bool) -> None:
    """Append an error unless ``value`` is a finite Decimal quantity, >= 0 (or > 0)."""
    value = _finite_decimal(errors, field, value)
    if value is None:
        return
    if allow_zero and value < 0:
        errors.append(f"{field} must be >= 0; got {value}")
    elif not allow_zero and value <= 0:
        errors.append(f"{field} must be > 0; got {value}")


def _check_unit_amount(errors: list[str], field: str, value: object) -> None:
    """Append an error unless ``value`` is a finite Decimal >= 0 with at most 12 places."""
    value = _finite_decimal(errors, field, value)
    if value is None:
        return
    if value < 0:
        errors.append(f"{field} must be >= 0; got {value}")
    if _decimal_places(value) > MAX_UNIT_AMOUNT_PLACES:
        errors.append(
            f"{field} must have at most {MAX_UNIT_AMOUNT_PLACES} decimal places; got {value}"
        )


def _check_minor(errors: list[str], field: str, value: object) -> None:
    """Append an error unless ``value`` is an int amount in minor units, 0 to 10^15."""
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(f"{field} must be an integer in minor units, not {type(value).__name__}")
    elif value < 0:
        errors.append(f"{field} must be >= 0; got {value}")
    elif value > MAX_AMOUNT_MINOR:
        errors.append(f"{field} must be at most 10^15 minor units")


def _check_tiers(errors: list[str], tiers: tuple[Tier, ...]) -> None:
    """Append errors unless tiers ascend strictly by ``up_to`` and only the last is open."""
    if not tiers:
        errors.append("tiers must contain at least one tier")
        return
    previous: Decimal | None = None
    for index, tier in enumerate(tiers):
        name = f"tiers[{index}]"
        last = index == len(tiers) - 1
        _check_unit_amount(errors, f"{name}.unit_amount_minor", tier.unit_amount_minor)
        _check_minor(errors, f"{name}.flat_amount_minor", tier.flat_amount_minor)
        if tier.up_to is None:
            if not last:
                errors.append(f"{name}.up_to may be empty (open) only on the last tier")
            continue
        if last:
            errors.append(f"{name}.up_to must be empty: the last tier is open")
        up_to = _finite_decimal(errors, f"{name}.up_to", tier.up_to)
        if up_to is None:
            continue
        if up_to <= 0:
            errors.append(f"{name}.up_to must be > 0; got {up_to}")
        elif previous is not None and up_to <= previous:
            errors.append(
                f"{name}.up_to must be greater than the previous tier's ({previous}); got {up_to}"
            )
        previous = up_to if previous is None else max(previous, up_to)
