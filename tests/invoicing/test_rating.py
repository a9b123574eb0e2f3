"""Tests of the rating engine against hand-computed amounts and an independent exact oracle."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invoicing.rating import (
    PriceSpec,
    RatedPortion,
    Tier,
    rate,
    rate_breakdown,
    rate_line,
    round_half_up,
    validate_price_spec,
)
from metering.currencies import format_minor

D = Decimal

# The example plan of DESIGN section 4.
AGENT_TASKS = PriceSpec(model="per_unit", unit_amount_minor=D("5"))
LLM_TOKENS = PriceSpec(
    model="graduated",
    included_quantity=D("100000"),
    tiers=(
        Tier(up_to=D("1000000"), unit_amount_minor=D("0.002"), flat_amount_minor=0),
        Tier(up_to=None, unit_amount_minor=D("0.001")),
    ),
)
AGENT_MINUTES = PriceSpec(
    model="package", package_size=D("60"), package_amount_minor=150, minimum_minor=500
)

# A volume price with a flat fee in every tier but the last.
VOLUME = PriceSpec(
    model="volume",
    tiers=(
        Tier(up_to=D("100"), unit_amount_minor=D("10"), flat_amount_minor=500),
        Tier(up_to=D("1000"), unit_amount_minor=D("8"), flat_amount_minor=300),
        Tier(up_to=None, unit_amount_minor=D("5")),
    ),
)

# A graduated price with a platform fee on the first (free) tier and a fee on the second.
GRADUATED_FLAT = PriceSpec(
    model="graduated",
    tiers=(
        Tier(up_to=D("10"), unit_amount_minor=D("0"), flat_amount_minor=1000),
        Tier(up_to=D("100"), unit_amount_minor=D("50"), flat_amount_minor=200),
        Tier(up_to=None, unit_amount_minor=D("25")),
    ),
)


# --- the example plan ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "expected_minor"),
    [("0", 0), ("1", 5), ("1234", 6170), ("2.5", 13), ("0.1", 1), ("0.099999", 0)],
)
def test_agent_tasks_per_unit(quantity: str, expected_minor: int) -> None:
    assert rate(AGENT_TASKS, D(quantity)) == expected_minor


@pytest.mark.parametrize(
    ("quantity", "expected_minor"),
    [
        ("0", 0),
        ("50000", 0),  # inside the included quantity
        ("100000", 0),  # exactly the included quantity
        ("100249", 0),  # 249 x 0.002 = 0.498
        ("100250", 1),  # 250 x 0.002 = 0.5, rounded half-up
        ("350000", 500),  # 250,000 x 0.002
        ("1100000", 2000),  # exactly the end of tier 1
        ("1100001", 2000),  # 2000 + 1 x 0.001
        ("1100500", 2001),  # 2000 + 500 x 0.001 = 2000.5
        ("2500000", 3400),  # 2000 + 1,400,000 x 0.001
    ],
)
def test_llm_tokens_graduated_with_included_quantity(quantity: str, expected_minor: int) -> None:
    assert rate(LLM_TOKENS, D(quantity)) == expected_minor


def test_llm_tokens_breakdown_lists_each_tier_reached() -> None:
    line = rate_line(LLM_TOKENS, D("2500000"))

    assert line.billable_quantity == D("2400000")
    assert line.portions == (
        RatedPortion(
            tier_index=0,
            quantity=D("1000000"),
            unit_amount_minor=D("0.002"),
            flat_amount_minor=0,
            packages=None,
            subtotal_minor=D("2000"),
        ),
        RatedPortion(
            tier_index=1,
            quantity=D("1400000"),
            unit_amount_minor=D("0.001"),
            flat_amount_minor=0,
            packages=None,
            subtotal_minor=D("1400"),
        ),
    )
    assert line.exact_minor == D("3400")
    assert line.rounded_minor == 3400
    assert line.amount_minor == 3400
    assert line.minimum_applied is False


def test_llm_tokens_breakdown_stops_at_the_tier_reached() -> None:
    portions = rate_breakdown(LLM_TOKENS, D("350000"))

    assert [(p.tier_index, p.quantity, p.subtotal_minor) for p in portions] == [
        (0, D("250000"), D("500"))
    ]


@pytest.mark.parametrize(
    ("minutes", "expected_minor"),
    [
        ("0", 500),  # nothing used: the minimum
        ("1", 500),  # 1 package = 150, raised to the minimum
        ("61", 500),  # 2 packages = 300
        ("180", 500),  # 3 packages = 450
        ("180.000001", 600),  # a started package counts: 4 packages
        ("200", 600),
        ("240", 600),  # exactly 4 packages
        ("240.000001", 750),
        ("6000", 15000),  # 100 packages
    ],
)
def test_agent_minutes_package_with_minimum(minutes: str, expected_minor: int) -> None:
    assert rate(AGENT_MINUTES, D(minutes)) == expected_minor


def test_package_breakdown_counts_started_packages() -> None:
    line = rate_line(AGENT_MINUTES, D("200"))

    assert line.portions == (
        RatedPortion(
            tier_index=None,
            quantity=D("200"),
            unit_amount_minor=D("150"),
            flat_amount_minor=0,
            packages=4,
            subtotal_minor=D("600"),
        ),
    )
    assert line.amount_minor == 600


def test_example_plan_invoice_total_is_the_sum_of_lines() -> None:
    lines = [
        rate(AGENT_TASKS, D("1234")),
        rate(LLM_TOKENS, D("2500000")),
        rate(AGENT_MINUTES, D("200")),
    ]

    assert lines == [6170, 3400, 600]
    assert sum(lines) == 10170
    assert format_minor(sum(lines), "USD") == "$101.70"


# --- graduated and volume -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "expected_minor"),
    [
        ("0", 0),  # no tier reached: no platform fee
        ("0.000001", 1000),  # the first tier is reached: its flat fee applies
        ("5", 1000),
        ("10", 1000),  # exactly the end of tier 1; tier 2 not reached
        ("10.000001", 1200),  # 1000 + 0.00005 + 200
        ("10.5", 1225),  # 1000 + 0.5 x 50 + 200
        ("100", 5700),  # 1000 + 90 x 50 + 200
        ("150", 6950),  # 1000 + 4500 + 200 + 50 x 25
    ],
)
def test_graduated_flat_amounts_apply_to_each_tier_reached(
    quantity: str, expected_minor: int
) -> None:
    assert rate(GRADUATED_FLAT, D(quantity)) == expected_minor


@pytest.mark.parametrize(
    ("quantity", "expected_minor", "tier_index"),
    [
        ("0.000001", 500, 0),  # 0.00001 + 500
        ("50", 1000, 0),  # 50 x 10 + 500
        ("100", 1500, 0),  # the bound is inclusive: 100 x 10 + 500
        ("100.000001", 1100, 1),  # 800.000008 + 300
        ("500", 4300, 1),
        ("1000", 8300, 1),  # 1000 x 8 + 300
        ("1000.000001", 5000, 2),  # 5000.000005
        ("2000", 10000, 2),
    ],
)
def test_volume_bills_all_units_at_the_tier_the_quantity_falls_in(
    quantity: str, expected_minor: int, tier_index: int
) -> None:
    line = rate_line(VOLUME, D(quantity))

    assert line.amount_minor == expected_minor
    assert [p.tier_index for p in line.portions] == [tier_index]
    assert line.portions[0].quantity == D(quantity)


def test_volume_zero_quantity_costs_nothing_despite_the_first_tiers_flat_fee() -> None:
    line = rate_line(VOLUME, D("0"))

    assert line.amount_minor == 0
    assert line.portions == ()


def test_graduated_single_open_tier_is_per_unit() -> None:
    spec = PriceSpec(model="graduated", tiers=(Tier(up_to=None, unit_amount_minor=D("3")),))

    assert rate(spec, D("7")) == 21


# --- rounding -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit_amount", "quantity", "expected_minor"),
    [
        ("0.5", "1", 1),
        ("0.5", "3", 2),  # 1.5
        ("0.5", "5", 3),  # 2.5: half-up, not half-even
        ("2.5", "1", 3),
        ("0.25", "2", 1),  # 0.5
        ("0.25", "10", 3),  # 2.5
        ("0.499999999999", "1", 0),
        ("0.000000000001", "500000000000", 1),  # exactly 0.5
        ("0.000000000001", "499999999999", 0),  # 0.499999999999
        ("0.000000000001", "1000000000000", 1),
        ("1.000000000001", "1000000000000", 1000000000001),
        ("0.333333333333", "3", 1),  # 0.999999999999
        ("123.456789012345", "0.000001", 0),  # 0.000123456789012345
    ],
)
def test_rounds_once_half_up(unit_amount: str, quantity: str, expected_minor: int) -> None:
    spec = PriceSpec(model="per_unit", unit_amount_minor=D(unit_amount))

    assert rate(spec, D(quantity)) == expected_minor


def test_graduated_rounds_the_line_once_not_each_tier() -> None:
    # Each tier is 0.4 minor units; rounding per tier would give 0, the line rounds 0.8 to 1.
    spec = PriceSpec(
        model="graduated",
        tiers=(
            Tier(up_to=D("1"), unit_amount_minor=D("0.4")),
            Tier(up_to=None, unit_amount_minor=D("0.4")),
        ),
    )
    line = rate_line(spec, D("2"))

    assert [p.subtotal_minor for p in line.portions] == [D("0.4"), D("0.4")]
    assert line.exact_minor == D("0.8")
    assert line.amount_minor == 1


@pytest.mark.parametrize(
    ("amount", "expected"),
    [("0", 0), ("0.4999", 0), ("0.5", 1), ("1.5", 2), ("2.5", 3), ("-0.5", -1), ("7", 7)],
)
def test_round_half_up(amount: str, expected: int) -> None:
    assert round_half_up(D(amount)) == expected


# --- minimums, zero and included quantity ---------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "expected_minor", "minimum_applied"),
    [("0", 100, True), ("19", 100, True), ("20", 100, False), ("21", 105, False)],
)
def test_minimum_raises_a_short_line(
    quantity: str, expected_minor: int, minimum_applied: bool
) -> None:
    spec = PriceSpec(model="per_unit", unit_amount_minor=D("5"), minimum_minor=100)
    line = rate_line(spec, D(quantity))

    assert line.amount_minor == expected_minor
    assert line.minimum_applied is minimum_applied


def test_minimum_applies_after_rounding() -> None:
    spec = PriceSpec(model="per_unit", unit_amount_minor=D("0.5"), minimum_minor=1)

    assert rate_line(spec, D("0.4")).rounded_minor == 0  # 0.2
    assert rate(spec, D("0.4")) == 1
    assert rate(spec, D("3")) == 2  # 1.5 rounds to 2, above the minimum


@pytest.mark.parametrize(
    "spec", [AGENT_TASKS, LLM_TOKENS, VOLUME, GRADUATED_FLAT], ids=lambda s: s.model
)
def test_zero_quantity_without_minimum_costs_zero(spec: PriceSpec) -> None:
    line = rate_line(spec, D("0"))

    assert line.amount_minor == 0
    assert line.exact_minor == 0
    assert line.portions == ()


def test_zero_quantity_package_without_minimum_costs_zero() -> None:
    spec = PriceSpec(model="package", package_size=D("1000"), package_amount_minor=7)

    assert rate(spec, D("0")) == 0
    assert rate(spec, D("0.000001")) == 7


@pytest.mark.parametrize(
    "spec",
    [
        PriceSpec(model="per_unit", unit_amount_minor=D("5"), minimum_minor=250),
        PriceSpec(model="volume", tiers=VOLUME.tiers, minimum_minor=250),
        PriceSpec(model="graduated", tiers=GRADUATED_FLAT.tiers, minimum_minor=250),
        PriceSpec(model="package", package_size=D("10"), package_amount_minor=9, minimum_minor=250),
    ],
    ids=lambda s: s.model,
)
def test_zero_quantity_with_minimum_costs_the_minimum(spec: PriceSpec) -> None:
    line = rate_line(spec, D("0"))

    assert line.rounded_minor == 0
    assert line.amount_minor == 250


def test_included_quantity_larger_than_usage_bills_nothing() -> None:
    spec = PriceSpec(model="per_unit", unit_amount_minor=D("5"), included_quantity=D("1000.5"))
    line = rate_line(spec, D("1000.499999"))

    assert line.billable_quantity == 0
    assert line.portions == ()
    assert line.amount_minor == 0
    assert rate(spec, D("1000.7")) == 1  # 0.2 x 5 = 1.0


def test_included_quantity_applies_before_volume_tier_selection() -> None:
    spec = PriceSpec(model="volume", tiers=VOLUME.tiers, included_quantity=D("50"))

    assert rate(spec, D("150")) == 1500  # q = 100 stays in tier 0
    assert rate(spec, D("150.000001")) == 1100  # q = 100.000001 moves to tier 1


def test_large_quantities_are_exact() -> None:
    spec = PriceSpec(model="per_unit", unit_amount_minor=D("0.123456789012"))
    line = rate_line(spec, D("999999999999.999999"))

    # 0.123456789012 x 10^12 - 0.123456789012 x 10^-6, every digit kept
    assert line.exact_minor == D("123456789011.999999876543210988")
    assert line.amount_minor == 123456789012


# --- currencies ---------------------------------------------------------------------------


def test_rating_in_jpy_has_no_decimals() -> None:
    spec = PriceSpec(model="per_unit", unit_amount_minor=D("0.3"))  # yen per unit

    amount = rate(spec, D("5"))  # 1.5 yen

    assert amount == 2
    assert format_minor(amount, "JPY") == "¥2"


def test_rating_in_kwd_has_three_decimals() -> None:
    spec = PriceSpec(model="per_unit", unit_amount_minor=D("0.0125"))  # fils per unit

    amount = rate(spec, D("1000"))  # 12.5 fils

    assert amount == 13
    assert format_minor(amount, "KWD") == "KD 0.013"
    assert format_minor(rate(spec, D("1000000")), "KWD") == "KD 12.500"


# --- validation ---------------------------------------------------------------------------


def test_valid_specs_have_no_errors() -> None:
    for spec in (AGENT_TASKS, LLM_TOKENS, AGENT_MINUTES, VOLUME, GRADUATED_FLAT):
        assert validate_price_spec(spec) == []


OPEN = Tier(up_to=None, unit_amount_minor=D("1"))


@pytest.mark.parametrize(
    ("spec", "errors"),
    [
        (
            PriceSpec(model="tiered", unit_amount_minor=D("1")),
            ["model must be one of per_unit, graduated, volume, package; got 'tiered'"],
        ),
        (
            PriceSpec(model="per_unit"),
            ["unit_amount_minor is required for the per_unit model"],
        ),
        (
            PriceSpec(model="per_unit", unit_amount_minor=D("-1")),
            ["unit_amount_minor must be >= 0; got -1"],
        ),
        (
            PriceSpec(model="per_unit", unit_amount_minor=D("0.0000000000001")),
            ["unit_amount_minor must have at most 12 decimal places; got 1E-13"],
        ),
        (
            PriceSpec(model="per_unit", unit_amount_minor=D("NaN")),
            ["unit_amount_minor must be finite; got NaN"],
        ),
        (
            PriceSpec(model="per_unit", unit_amount_minor=0.5),  # type: ignore[arg-type]
            ["unit_amount_minor must be a Decimal, not float"],
        ),
        (
            PriceSpec(model="per_unit", unit_amount_minor=D("1"), included_quantity=D("-1")),
            ["included_quantity must be >= 0; got -1"],
        ),
        (
            PriceSpec(model="per_unit", unit_amount_minor=D("1"), minimum_minor=-1),
            ["minimum_minor must be >= 0; got -1"],
        ),
        (
            PriceSpec(model="per_unit", unit_amount_minor=D("1"), minimum_minor=10**15 + 1),
            ["minimum_minor must be at most 10^15 minor units"],
        ),
        (
            PriceSpec(model="package", package_size=D("60"), package_amount_minor=2**63),
            ["package_amount_minor must be at most 10^15 minor units"],
        ),
        (
            PriceSpec(model="per_unit", unit_amount_minor=D("1"), minimum_minor=1.5),  # type: ignore[arg-type]
            ["minimum_minor must be an integer in minor units, not float"],
        ),
        (
            PriceSpec(model="per_unit", unit_amount_minor=D("1"), tiers=(OPEN,)),
            ["tiers must be empty for the per_unit model"],
        ),
        (
            PriceSpec(model="graduated"),
            ["tiers must contain at least one tier"],
        ),
        (
            PriceSpec(model="volume", tiers=(OPEN,), unit_amount_minor=D("1")),
            ["unit_amount_minor must be empty for the volume model"],
        ),
        (
            PriceSpec(model="graduated", tiers=(Tier(D("10"), D("1")),)),
            ["tiers[0].up_to must be empty: the last tier is open"],
        ),
        (
            PriceSpec(model="volume", tiers=(OPEN, Tier(D("10"), D("1")))),
            [
                "tiers[0].up_to may be empty (open) only on the last tier",
                "tiers[1].up_to must be empty: the last tier is open",
            ],
        ),
        (
            PriceSpec(
                model="graduated", tiers=(Tier(D("10"), D("1")), Tier(D("10"), D("1")), OPEN)
            ),
            ["tiers[1].up_to must be greater than the previous tier's (10); got 10"],
        ),
        (
            PriceSpec(model="volume", tiers=(Tier(D("10"), D("1")), Tier(D("5"), D("1")), OPEN)),
            ["tiers[1].up_to must be greater than the previous tier's (10); got 5"],
        ),
        (
            PriceSpec(model="graduated", tiers=(Tier(D("0"), D("1")), OPEN)),
            ["tiers[0].up_to must be > 0; got 0"],
        ),
        (
            PriceSpec(model="graduated", tiers=(Tier(D("-5"), D("1")), OPEN)),
            ["tiers[0].up_to must be > 0; got -5"],
        ),
        (
            PriceSpec(model="volume", tiers=(Tier(D("10"), D("-0.1")), OPEN)),
            ["tiers[0].unit_amount_minor must be >= 0; got -0.1"],
        ),
        (
            PriceSpec(model="graduated", tiers=(Tier(None, D("0.1234567890123")),)),
            ["tiers[0].unit_amount_minor must have at most 12 decimal places; got 0.1234567890123"],
        ),
        (
            PriceSpec(model="volume", tiers=(Tier(None, D("1"), flat_amount_minor=-1),)),
            ["tiers[0].flat_amount_minor must be >= 0; got -1"],
        ),
        (
            PriceSpec(model="package", package_amount_minor=1),
            ["package_size is required for the package model"],
        ),
        (
            PriceSpec(model="package", package_size=D("0"), package_amount_minor=1),
            ["package_size must be > 0; got 0"],
        ),
        (
            PriceSpec(model="package", package_size=D("-60"), package_amount_minor=1),
            ["package_size must be > 0; got -60"],
        ),
        (
            PriceSpec(model="package", package_size=D("60")),
            ["package_amount_minor is required for the package model"],
        ),
        (
            PriceSpec(model="package", package_size=D("60"), package_amount_minor=-150),
            ["package_amount_minor must be >= 0; got -150"],
        ),
        (
            PriceSpec(model="per_unit", unit_amount_minor=D("1"), package_size=D("60")),
            ["package_size must be empty for the per_unit model"],
        ),
    ],
)
def test_validate_price_spec_rejects(spec: PriceSpec, errors: list[str]) -> None:
    assert validate_price_spec(spec) == errors


def test_unit_amount_trailing_zeros_do_not_count_as_decimal_places() -> None:
    spec = PriceSpec(model="per_unit", unit_amount_minor=D("0.001000000000000000"))

    assert validate_price_spec(spec) == []


def test_rate_refuses_invalid_prices_and_quantities() -> None:
    with pytest.raises(ValueError, match="invalid price: unit_amount_minor must be >= 0"):
        rate(PriceSpec(model="per_unit", unit_amount_minor=D("-1")), D("1"))
    with pytest.raises(ValueError, match="quantity must be >= 0"):
        rate(AGENT_TASKS, D("-0.000001"))
    with pytest.raises(ValueError, match="quantity must be finite"):
        rate(AGENT_TASKS, D("Infinity"))
    with pytest.raises(TypeError, match="quantity must be a Decimal, not float"):
        rate(AGENT_TASKS, 1.5)  # type: ignore[arg-type]


def test_rate_refuses_amounts_it_cannot_compute_exactly() -> None:
    # 51 integer digits and 12 decimal places: the product needs 81 significant digits.
    unit_amount = D("1" + "0" * 50 + "." + "0" * 11 + "1")
    spec = PriceSpec(model="per_unit", unit_amount_minor=unit_amount)

    with pytest.raises(ValueError, match="cannot be computed exactly"):
        rate(spec, D("999999999999.999999"))


def test_rate_accepts_integer_quantities() -> None:
    assert rate(AGENT_TASKS, 3) == 15  # type: ignore[arg-type]


# --- properties ---------------------------------------------------------------------------

quantities = st.decimals(
    min_value=0, max_value=10**12, places=6, allow_nan=False, allow_infinity=False
)
unit_amounts = st.decimals(
    min_value=0, max_value=10**4, places=12, allow_nan=False, allow_infinity=False
)
positive_quantities = st.decimals(
    min_value=D("0.000001"), max_value=10**12, places=6, allow_nan=False, allow_infinity=False
)
minor_amounts = st.integers(min_value=0, max_value=10**9)


@st.composite
def tier_lists(draw: st.DrawFn) -> tuple[Tier, ...]:
    bounds = sorted(draw(st.sets(positive_quantities, max_size=4)))
    ups: list[Decimal | None] = [*bounds, None]
    return tuple(
        Tier(up_to=up, unit_amount_minor=draw(unit_amounts), flat_amount_minor=draw(minor_amounts))
        for up in ups
    )


@st.composite
def price_specs(draw: st.DrawFn, models: tuple[str, ...]) -> PriceSpec:
    model = draw(st.sampled_from(models))
    common = {
        "included_quantity": draw(st.one_of(st.just(D(0)), quantities)),
        "minimum_minor": draw(st.one_of(st.just(0), minor_amounts)),
    }
    if model == "per_unit":
        return PriceSpec(model=model, unit_amount_minor=draw(unit_amounts), **common)
    if model == "package":
        return PriceSpec(
            model=model,
            package_size=draw(positive_quantities),
            package_amount_minor=draw(minor_amounts),
            **common,
        )
    return PriceSpec(model=model, tiers=draw(tier_lists()), **common)


ALL_MODELS = ("per_unit", "graduated", "volume", "package")
MONOTONIC_MODELS = ("per_unit", "graduated", "package")


def exact_oracle(spec: PriceSpec, quantity: Decimal) -> Fraction:
    """Rate with rational arithmetic, independently of the engine; unrounded, no minimum."""
    q = max(Fraction(quantity) - Fraction(spec.included_quantity), Fraction(0))
    if q == 0:
        return Fraction(0)
    if spec.model == "per_unit":
        assert spec.unit_amount_minor is not None
        return q * Fraction(spec.unit_amount_minor)
    if spec.model == "package":
        assert spec.package_size is not None and spec.package_amount_minor is not None
        return math.ceil(q / Fraction(spec.package_size)) * Fraction(spec.package_amount_minor)
    if spec.model == "volume":
        tier = next(t for t in spec.tiers if t.up_to is None or q <= Fraction(t.up_to))
        return q * Fraction(tier.unit_amount_minor) + tier.flat_amount_minor
    total = Fraction(0)
    lower = Fraction(0)
    for tier in spec.tiers:
        if q <= lower:
            break
        upper = q if tier.up_to is None else min(q, Fraction(tier.up_to))
        total += (upper - lower) * Fraction(tier.unit_amount_minor) + tier.flat_amount_minor
        if tier.up_to is None:
            break
        lower = Fraction(tier.up_to)
    return total


@settings(max_examples=200, deadline=None)
@given(spec=price_specs(ALL_MODELS), quantity=quantities)
def test_line_is_the_exact_amount_rounded_half_up_once(spec: PriceSpec, quantity: Decimal) -> None:
    assert validate_price_spec(spec) == []
    exact = exact_oracle(spec, quantity)
    line = rate_line(spec, quantity)

    assert Fraction(line.exact_minor) == exact
    assert abs(line.rounded_minor - exact) <= Fraction(1, 2)
    assert line.rounded_minor == math.floor(exact + Fraction(1, 2))
    assert line.amount_minor == max(line.rounded_minor, spec.minimum_minor)
    assert rate(spec, quantity) == line.amount_minor
    assert sum(Fraction(p.subtotal_minor) for p in line.portions) == exact


@settings(max_examples=200, deadline=None)
@given(spec=price_specs(MONOTONIC_MODELS), a=quantities, b=quantities)
def test_more_usage_never_costs_less(spec: PriceSpec, a: Decimal, b: Decimal) -> None:
    low, high = sorted((a, b))

    assert rate(spec, low) <= rate(spec, high)


@settings(max_examples=200, deadline=None)
@given(spec=price_specs(("graduated",)), quantity=quantities)
def test_graduated_portions_cover_the_billable_quantity(spec: PriceSpec, quantity: Decimal) -> None:
    line = rate_line(spec, quantity)

    assert sum((p.quantity for p in line.portions), D(0)) == line.billable_quantity
    assert [p.tier_index for p in line.portions] == list(range(len(line.portions)))
