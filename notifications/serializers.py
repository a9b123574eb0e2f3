"""Budget and allowance shapes of the API (DESIGN sections 3 and 6)."""

from __future__ import annotations

from rest_framework import serializers


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer only: DRF's IntegerField also takes "100" and 100.0, which the budget
    service rejects; minor units and percentages are whole JSON numbers."""

    def to_internal_value(self, data: object) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class BudgetInput(serializers.Serializer):
    cap_minor = StrictIntegerField(allow_null=True, min_value=1, max_value=10**15)
    thresholds = serializers.ListField(
        child=StrictIntegerField(min_value=1, max_value=100),
        min_length=1,
        max_length=10,
        required=False,
        default=[50, 80, 100],
    )
    action = serializers.ChoiceField(choices=["alert", "pause"], required=False, default="alert")

    def validate_thresholds(self, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise serializers.ValidationError("thresholds must be distinct")
        return sorted(value)


class AllowanceOutput(serializers.Serializer):
    status = serializers.CharField()
    currency = serializers.CharField()
    cap_minor = serializers.IntegerField(allow_null=True)
    spent_minor = serializers.IntegerField()
    remaining_minor = serializers.IntegerField(allow_null=True)
    period_start = serializers.DateTimeField(allow_null=True)
    period_end = serializers.DateTimeField(allow_null=True)


class BudgetOutput(AllowanceOutput):
    customer_id = serializers.CharField(source="customer.external_id")
    thresholds = serializers.ListField(child=serializers.IntegerField())
    action = serializers.CharField(allow_null=True)
