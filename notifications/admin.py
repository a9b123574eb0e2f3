"""Finance staff's view of what was sent: resend a message, see bounces and pauses (the
budgets themselves are in budgets.admin)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from audit.services import record_audit
from notifications import services
from notifications.models import Notification, OperatorWebhook


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["created_at", "kind", "customer", "status", "recipients", "sent_at", "key"]
    list_filter = ["status", "kind"]  # "bounced" and "ops_paused" are what finance watches
    search_fields = ["key", "customer__external_id", "provider_message_id"]
    list_select_related = ["customer"]
    readonly_fields = [f.name for f in Notification._meta.fields]
    actions = ["resend"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Notification | None = None) -> bool:
        return False

    @admin.action(description="Resend selected messages", permissions=["change"])
    def resend(self, request: HttpRequest, queryset) -> None:
        for notification in queryset.order_by("pk"):
            again = services.resend_notification(notification=notification, user=request.user)
            record_audit(
                action="admin.notification_resent",
                obj=notification,
                user=request.user,
                customer_external_id=notification.customer.external_id
                if notification.customer
                else "",
                data={"new_key": again.key},
            )
        self.message_user(request, f"Queued {queryset.count()} message(s) again.")


@admin.register(OperatorWebhook)
class OperatorWebhookAdmin(admin.ModelAdmin):
    list_display = ["created_at", "event", "customer", "status", "attempts", "delivered_at"]
    list_filter = ["status", "event"]
    search_fields = ["key", "customer__external_id"]
    readonly_fields = [f.name for f in OperatorWebhook._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: OperatorWebhook | None = None
    ) -> bool:
        return False
