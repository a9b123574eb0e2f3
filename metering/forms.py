"""Admin forms that validate what the model alone cannot."""

from __future__ import annotations

from typing import Any

from django import forms

from metering.models import ApiKey, Meter


class MeterForm(forms.ModelForm):
    class Meta:
        model = Meter
        fields = [
            "code",
            "name",
            "unit",
            "aggregation",
            "unique_property",
            "description",
            "is_active",
        ]

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if data.get("aggregation") == Meter.Aggregation.UNIQUE_COUNT and not data.get(
            "unique_property"
        ):
            self.add_error("unique_property", "A unique_count meter needs the property to count.")
        return data


class ApiKeyCreateForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ["name", "customer", "expires_at"]
