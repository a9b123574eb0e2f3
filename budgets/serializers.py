"""Budget and allowance shapes of the API (DESIGN sections 3 and 6). Input serializers check
types only; what makes a budget valid is budgets.rules.validate_budget."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from budgets import rules
from budgets.models import BudgetCap, default_thresholds


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer only: DRF's IntegerField also takes "100" and 100.0, which the budget
    rules reject; minor units and percentages are whole JSON numbers."""

    def to_internal_value(self, data: object) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class BudgetInput(serializers.Serializer):
    cap_minor = StrictIntegerField(allow_null=True)
    thresholds = serializers.ListField(
        child=StrictIntegerField(), required=False, default=default_thresholds
    )
    action = serializers.ChoiceField(
        choices=BudgetCap.Action.choices, required=False, default=BudgetCap.Action.ALERT
    )

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        errors = rules.validate_budget(
            cap_minor=data["cap_minor"], thresholds=data["thresholds"], action=data["action"]
        )
        if errors:
            raise serializers.ValidationError(errors)
        return {**data, "thresholds": sorted(data["thresholds"])}


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
