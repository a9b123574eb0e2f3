"""The audit log in the back office: read-only (the database refuses UPDATE and DELETE)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from audit.models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["at", "actor", "action", "object_type", "object_id", "customer_external_id"]
    list_filter = ["action"]
    search_fields = ["=customer_external_id", "=object_id"]
    date_hierarchy = "at"
    fields = readonly_fields = (
        "at",
        "actor",
        "actor_id",
        "action",
        "object_type",
        "object_id",
        "customer_external_id",
        "pretty_data",
    )
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="data")
    def pretty_data(self, entry: AuditEntry) -> str:
        text = json.dumps(entry.data, indent=2, sort_keys=True, ensure_ascii=False)
        return format_html("<pre>{}</pre>", text)
