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


class PriceInput(serializers.Serializer):
    meter = serializers.SlugField(max_length=64)
    model = serializers.ChoiceField(choices=list(PRICE_MODELS))
    unit_amount_minor = _unit_amount(required=False, allow_null=True, default=None)
    tiers = TierInput(many=True, required=False, default=list)
    package_size = _quantity(required=False, allow_null=True, default=None)
    package_amount_minor = serializers.IntegerField(
        min_value=0, required=False, allow_null=True, default=None
    )
    included_quantity = _quantity(required=False, default="0")
    minimum_minor = serializers.IntegerField(min_value=0, required=False, default=0)


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
        """Prices as the plan JSON of DESIGN section 4: decimals as exact strings, never floats."""

        def text(value: Decimal | None) -> str | None:
            return None if value is None else decimal_text(value)

        return [
            {
                "meter": price.meter.code,
                "model": price.model,
                "unit_amount_minor": text(price.unit_amount_minor),
                "tiers": [
                    {
                        "up_to": text(tier.up_to),
                        "unit_amount_minor": text(tier.unit_amount_minor),
                        "flat_amount_minor": tier.flat_amount_minor,
                    }
                    for tier in price.tiers.order_by("position")
                ],
                "package_size": text(price.package_size),
                "package_amount_minor": price.package_amount_minor,
                "included_quantity": text(price.included_quantity),
                "minimum_minor": price.minimum_minor,
            }
            for price in plan.prices.select_related("meter").order_by("meter__code")
        ]


class CustomerWithPlanInput(CustomerInput):
    plan = serializers.SlugField(max_length=64, required=False)


class UsageLineOutput(serializers.Serializer):
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


class InvoiceLineOutput(serializers.Serializer):
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
