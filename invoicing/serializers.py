"""Input/output serializers of the invoicing API (plans, customers with a plan, usage, invoices)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rest_framework import serializers

from invoicing.models import UNIT_PRICE, Interval, PricePlan
from invoicing.rating import PRICE_MODELS
from metering.currencies import CURRENCIES
from metering.models import QUANTITY
from metering.serializers import CustomerInput, ExactDecimalField, decimal_text


def _unit_amount(**kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(**UNIT_PRICE, min_value=0, **kwargs)


def _quantity(**kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(**QUANTITY, min_value=0, **kwargs)


class TierInput(serializers.Serializer):
    up_to = _quantity(allow_null=True)
    unit_amount_minor = _unit_amount(required=False, default="0")
    flat_amount_minor = serializers.IntegerField(min_value=0, required=False, default=0)


class _PriceFields(serializers.Serializer):
    """The fields of an ordinary price (DESIGN section 4), in a price or a rate card rule."""

    model = serializers.ChoiceField(choices=list(PRICE_MODELS))
    unit_amount_minor = _unit_amount(required=False, allow_null=True, default=None)
    tiers = TierInput(many=True, required=False, default=list)
    package_size = _quantity(required=False, allow_null=True, default=None)
    package_amount_minor = serializers.IntegerField(
        min_value=0, required=False, allow_null=True, default=None
    )
    included_quantity = _quantity(required=False, default="0")
    minimum_minor = serializers.IntegerField(min_value=0, required=False, default=0)


class RateInput(_PriceFields):
    """A rule of a rate card (DESIGN 4a): `match` (dimension -> text value; {} catch-all)
    and an ordinary price. The match's keys and values are checked with the rate card."""

    match = serializers.DictField(required=False, default=dict)


_PRICE_FIELDS = tuple(_PriceFields().fields)


class PriceInput(_PriceFields):
    """An ordinary price, or a rate card: `dimensions` and `rates` and no top-level model."""

    meter = serializers.SlugField(max_length=64)
    model = serializers.ChoiceField(choices=list(PRICE_MODELS), required=False)
    dimensions = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=10
    )
    rates: serializers.ListSerializer[Any] = serializers.ListSerializer(
        child=RateInput(), required=False, max_length=200
    )

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict) and ("rates" in data or "dimensions" in data):
            given = [name for name in _PRICE_FIELDS if name in data]
            if given:
                raise serializers.ValidationError(
                    {given[0]: "a price with rates has no top-level price fields: each rule has"}
                )
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "rates" in attrs or "dimensions" in attrs:
            if "rates" not in attrs:
                raise serializers.ValidationError({"rates": "a price with dimensions needs rates"})
            if "dimensions" not in attrs:
                raise serializers.ValidationError({"dimensions": "rates need 1 to 3 dimensions"})
        elif "model" not in attrs:
            raise serializers.ValidationError({"model": "This field is required."})
        return attrs


class PlanInput(serializers.Serializer):
    code = serializers.SlugField(max_length=64)
    name = serializers.CharField(max_length=200)
    currency = serializers.ChoiceField(choices=sorted(CURRENCIES))
    interval = serializers.ChoiceField(choices=Interval.values, default=Interval.MONTH)
    prices: serializers.ListSerializer[Any] = serializers.ListSerializer(
        child=PriceInput(), allow_empty=True, max_length=100
    )


class PlanOutput(serializers.ModelSerializer):
    prices = serializers.SerializerMethodField()

    class Meta:
        model = PricePlan
        fields = ["code", "version", "name", "currency", "interval", "prices"]

    def get_prices(self, plan: PricePlan) -> list[dict]:
        """Prices as the plan JSON of DESIGN section 4 (a rate card as in 4a): decimals as
        exact strings, never floats."""
        prices = plan.prices.select_related("meter").prefetch_related("tiers", "rates__tiers")
        out: list[dict] = []
        for price in prices.order_by("meter__code"):
            if price.dimensions:
                out.append(
                    {
                        "meter": price.meter.code,
                        "dimensions": list(price.dimensions),
                        "rates": [
                            {"match": dict(rate.match), **_price_fields(rate)}
                            for rate in sorted(price.rates.all(), key=lambda r: r.position)
                        ],
                    }
                )
            else:
                out.append({"meter": price.meter.code, **_price_fields(price)})
        return out


def _text(value: Decimal | None) -> str | None:
    return None if value is None else decimal_text(value)


def _price_fields(price: Any) -> dict[str, Any]:
    """The ordinary price fields of a Price or a PriceRate."""
    return {
        "model": price.model,
        "unit_amount_minor": _text(price.unit_amount_minor),
        "tiers": [
            {
                "up_to": _text(tier.up_to),
                "unit_amount_minor": _text(tier.unit_amount_minor),
                "flat_amount_minor": tier.flat_amount_minor,
            }
            for tier in sorted(price.tiers.all(), key=lambda t: t.position)
        ],
        "package_size": _text(price.package_size),
        "package_amount_minor": price.package_amount_minor,
        "included_quantity": _text(price.included_quantity),
        "minimum_minor": price.minimum_minor,
    }


class CustomerWithPlanInput(CustomerInput):
    plan = serializers.SlugField(max_length=64, required=False)


class _WithDimensions(serializers.Serializer):
    """A line's `dimensions` (DESIGN 4a): its group's values by the price's dimension
    names, null for absent; a line of an ordinary price carries no such key."""

    def to_representation(self, instance: Any) -> dict[str, Any]:
        data = super().to_representation(instance)
        dimensions = line_dimensions(instance)
        if dimensions is not None:
            data["dimensions"] = dimensions
        return data


def line_dimensions(line: Any) -> dict[str, str | None] | None:
    """A drafted or stored line's group values (its pricing record's); None: no group."""
    pricing = line.pricing
    if isinstance(pricing, dict):
        found = pricing.get("dimensions")
        return dict(found) if isinstance(found, dict) and found else None
    return dict(pricing.dimensions) if pricing.dimensions else None


class UsageLineOutput(_WithDimensions):
    meter = serializers.CharField(source="meter.code")
    quantity = ExactDecimalField()
    amount_minor = serializers.IntegerField()


class UsageOutput(serializers.Serializer):
    customer_id = serializers.CharField()
    currency = serializers.CharField()
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField()
    lines = UsageLineOutput(many=True)
    total_minor = serializers.IntegerField()


class InvoiceLineOutput(_WithDimensions):
    meter = serializers.CharField(source="meter.code", allow_null=True, default=None)
    description = serializers.CharField()
    quantity = ExactDecimalField()
    amount_minor = serializers.IntegerField()
    kind = serializers.CharField()


class InvoiceOutput(serializers.Serializer):
    number = serializers.CharField(allow_null=True)
    status = serializers.CharField()
    period_start = serializers.DateTimeField(source="period.start")
    period_end = serializers.DateTimeField(source="period.end")
    currency = serializers.CharField()
    total_minor = serializers.IntegerField()
    lines = InvoiceLineOutput(many=True)
