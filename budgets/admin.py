"""Finance staff's budgets: set or raise a customer's cap, acknowledge a pause, see the alerts.
Every change goes through budgets.services, as from the API and the portal, so alerts,
pause/resume and the audit log follow."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest
from django.utils import timezone

from budgets import rules, services
from budgets.models import BudgetAlert, BudgetCap, BudgetEvent, BudgetPeriodState


class BudgetCapForm(forms.ModelForm):
    class Meta:
        model = BudgetCap
        fields = ["customer", "cap_minor", "thresholds", "action"]

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        errors = rules.validate_budget(
            cap_minor=data.get("cap_minor"),
            thresholds=data.get("thresholds"),
            action=data.get("action"),
        )
        for field, message in errors.items():
            self.add_error(field, message)
        return data


@admin.register(BudgetCap)
class BudgetCapAdmin(admin.ModelAdmin):
    """Finance staff set or raise a customer's cap, through the service the API and the portal
    use."""

    list_display = ["customer", "cap_minor", "thresholds", "action", "updated_at"]
    list_filter = ["action"]
    search_fields = ["customer__external_id", "customer__name"]
    form = BudgetCapForm
    fields = ["customer", "cap_minor", "thresholds", "action"]

    def get_readonly_fields(self, request: HttpRequest, obj: BudgetCap | None = None):
        return ["customer"] if obj is not None else []

    def save_model(self, request: HttpRequest, obj: BudgetCap, form, change: bool) -> None:
        services.set_budget_cap(
            customer=obj.customer,
            cap_minor=obj.cap_minor,
            thresholds=sorted(obj.thresholds),
            action=obj.action,
            now=timezone.now(),
            actor=request.user,
        )
        obj.pk = BudgetCap.objects.get(customer=obj.customer).pk

    def has_delete_permission(self, request: HttpRequest, obj: BudgetCap | None = None) -> bool:
        return False


@admin.register(BudgetPeriodState)
class BudgetPeriodStateAdmin(admin.ModelAdmin):
    list_display = [
        "customer",
        "period_start",
        "status",
        "spent_minor",
        "cap_minor",
        "acknowledged_by",
        "acknowledged_cap_minor",
        "checked_at",
    ]
    list_filter = ["status"]  # finance staff filter the paused customers here
    search_fields = ["customer__external_id"]
    readonly_fields = [f.name for f in BudgetPeriodState._meta.fields]
    actions = ["acknowledge"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: BudgetPeriodState | None = None
    ) -> bool:
        return False

    @admin.action(
        description="Acknowledge the pause (resume for the rest of the period)",
        permissions=["view"],
    )
    def acknowledge(self, request: HttpRequest, queryset) -> None:
        for state in queryset.filter(status=BudgetPeriodState.Status.PAUSED).select_related(
            "customer"
        ):
            try:
                services.acknowledge_pause(
                    customer=state.customer, now=timezone.now(), actor=request.user
                )
            except services.NothingPaused as exc:
                self.message_user(request, f"{state.customer}: {exc}", level=messages.WARNING)
        self.message_user(request, "Done.")


@admin.register(BudgetAlert)
class BudgetAlertAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "customer",
        "period_start",
        "threshold",
        "cap_minor",
        "spent_minor",
    ]
    list_filter = ["threshold"]
    search_fields = ["customer__external_id"]
    readonly_fields = [f.name for f in BudgetAlert._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: BudgetAlert | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: BudgetAlert | None = None) -> bool:
        return False


@admin.register(BudgetEvent)
class BudgetEventAdmin(admin.ModelAdmin):
    """Pauses and resumes: when, why, and who did it (read only)."""

    list_display = ["created_at", "customer", "period_start", "kind", "cause", "actor"]
    list_filter = ["kind", "cause"]
    search_fields = ["customer__external_id", "actor"]
    readonly_fields = [f.name for f in BudgetEvent._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: BudgetEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: BudgetEvent | None = None) -> bool:
        return False
