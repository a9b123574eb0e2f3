"""Small input/output serializers for the metering API (not used on the ingestion hot path)."""

from __future__ import annotations

from decimal import Decimal

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from metering.currencies import CURRENCIES
from metering.models import Customer, Meter, validate_timezone_name


class MeterOutput(serializers.ModelSerializer):
    class Meta:
        model = Meter
        fields = ["code", "name", "unit", "aggregation"]


class CustomerInput(serializers.Serializer):
    customer_id = serializers.RegexField(
        r"^[\x21-\x7e]{1,128}$",
        max_length=128,
        error_messages={"invalid": "must be 1-128 printable ASCII characters without spaces"},
    )
    name = serializers.CharField(max_length=200, required=False)
    emails = serializers.ListField(
        child=serializers.EmailField(max_length=254), max_length=20, required=False
    )
    currency = serializers.CharField(max_length=3, required=False)
    timezone = serializers.CharField(max_length=64, required=False)

    def validate_currency(self, value: str) -> str:
        if value not in CURRENCIES:
            raise serializers.ValidationError(
                f"unsupported currency; one of {', '.join(sorted(CURRENCIES))}"
            )
        return value

    def validate_timezone(self, value: str) -> str:
        try:
            validate_timezone_name(value)
        except DjangoValidationError:
            raise serializers.ValidationError(
                "must be an IANA time zone, e.g. Europe/Paris"
            ) from None
        return value


class CustomerOutput(serializers.ModelSerializer):
    customer_id = serializers.CharField(source="external_id")

    class Meta:
        model = Customer
        fields = ["customer_id", "name", "emails", "currency", "timezone", "status"]


class EventStatusOutput(serializers.Serializer):
    event_id = serializers.CharField()
    status = serializers.ChoiceField(choices=["accepted", "duplicate", "conflict"])


class CustomerStatusOutput(serializers.Serializer):
    status = serializers.ChoiceField(choices=["active", "warning", "paused"])
    remaining_minor = serializers.IntegerField(allow_null=True)


class IngestionOutput(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    conflicts = serializers.IntegerField()
    events = EventStatusOutput(many=True)
    customers = serializers.DictField(child=CustomerStatusOutput())


def decimal_text(value: Decimal) -> str:
    """An exact decimal as plain text without exponent or trailing zeros: 1500.000000 -> 1500."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


@extend_schema_field({"type": "string", "format": "decimal", "example": "0.000125"})
class ExactDecimalField(serializers.Field):
    """Read-only decimal rendered as an exact string (never a float): "0.000125"."""

    def __init__(self, **kwargs) -> None:
        kwargs["read_only"] = True
        super().__init__(**kwargs)

    def to_representation(self, value: Decimal) -> str:
        return decimal_text(Decimal(value))
