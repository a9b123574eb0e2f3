"""Back office for finance staff: customers, meters, API keys and (read-only) usage events."""

from __future__ import annotations

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

from metering import selectors, services
from metering.forms import ApiKeyCreateForm, MeterForm
from metering.models import ApiKey, Customer, Meter, UsageEvent


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ["external_id", "name", "currency", "timezone", "status", "created_at"]
    list_filter = ["status", "currency"]
    search_fields = ["external_id", "name"]
    readonly_fields = ["created_at", "updated_at"]


@admin.register(Meter)
class MeterAdmin(admin.ModelAdmin):
    form = MeterForm
    list_display = ["code", "name", "unit", "aggregation", "is_active"]
    list_filter = ["aggregation", "is_active"]
    search_fields = ["code", "name"]

    def get_readonly_fields(self, request: HttpRequest, obj: Meter | None = None) -> list[str]:
        # A meter with usage keeps what its usage means (services.save_meter enforces it).
        if obj is not None and selectors.meter_has_usage(meter=obj):
            return list(services.METER_MEANING_FIELDS)
        return []

    def save_model(self, request: HttpRequest, obj: Meter, form, change: bool) -> None:
        services.save_meter(meter=obj)

    def changeform_view(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        """A save that raced the meter's first event is refused by save_meter: shown as an
        error, the admin's transaction rolled back."""
        try:
            return super().changeform_view(request, *args, **kwargs)
        except services.MeterInUse as exc:
            self.message_user(request, str(exc), level=messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "customer", "created_at", "expires_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "customer__external_id"]
    readonly_fields = ["prefix", "created_at", "revoked_at"]
    actions = ["revoke_keys"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyCreateForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("name", "customer", "expires_at")
        return ("name", "prefix", "customer", "created_at", "expires_at", "revoked_at")

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        if obj is None:
            return []
        return ["prefix", "customer", "created_at", "revoked_at"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        plaintext = services.issue_api_key(api_key=obj)
        self.message_user(
            request,
            f"Copy this key now, it is shown only once: {plaintext}",
            level=messages.WARNING,
        )

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset) -> None:
        for api_key in queryset.order_by("pk"):
            services.revoke_api_key(api_key=api_key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False  # keys are revoked, not deleted, so events keep their provenance


@admin.register(UsageEvent)
class UsageEventAdmin(admin.ModelAdmin):
    list_display = ["event_id", "customer", "meter", "quantity", "timestamp", "received_at"]
    list_filter = ["meter", ("timestamp", admin.DateFieldListFilter)]
    search_fields = ["=event_id", "=customer__external_id"]
    list_select_related = ["customer", "meter"]
    date_hierarchy = "timestamp"
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: UsageEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: UsageEvent | None = None) -> bool:
        return False
