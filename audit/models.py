"""The audit log's one table."""

from __future__ import annotations

from django.db import models


class AuditEntry(models.Model):
    """Append-only record of what happened and who did it.

    PostgreSQL refuses UPDATE and DELETE on this table (a trigger created by invoicing's
    migration 0002, when the log still lived there; the table kept its name when the model
    moved here, so no row was copied). The actor is kept as plain values, not a foreign key,
    so deleting a user never touches the log.
    """

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    action = models.CharField(max_length=64, db_index=True)
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor = models.CharField(max_length=150, help_text="user name, or 'system'")
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    customer_external_id = models.CharField(max_length=128, blank=True, db_index=True)
    data = models.JSONField(default=dict)

    class Meta:
        db_table = "invoicing_auditentry"
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["object_type", "object_id"], name="audit_object")]

    def __str__(self) -> str:
        what = f"{self.object_type}#{self.object_id}"
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {what}"
