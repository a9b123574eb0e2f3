"""Notifications: every e-mail and operator webhook is a row first, sent second (an outbox).

The row's unique `key` (e.g. "summary:invoice:42", "budget-alert:17") makes a retry or a
second worker find the same row instead of sending again; status moves
pending -> sent -> delivered | bounced (from the provider's tracking webhooks) or failed.
"""

from __future__ import annotations

from django.db import models

from metering.models import Customer


class Notification(models.Model):
    class Kind(models.TextChoices):
        USAGE_SUMMARY = "usage_summary", "Usage summary before charging"
        INVOICE = "invoice", "Finalized invoice (PDF attached)"
        BUDGET_ALERT = "budget_alert", "Budget threshold alert"
        OPS_PAUSED = "ops_paused", "Finance: customer paused"
        OPS_BOUNCE = "ops_bounce", "Finance: billing e-mail bounced"
        OPS_UNPRICED = "ops_unpriced", "Finance: unpriced usage (rate card)"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending (claimed by a worker)"
        SENT = "sent", "Sent"
        DELIVERED = "delivered", "Delivered"
        BOUNCED = "bounced", "Bounced"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped (no recipients)"

    key = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    customer = models.ForeignKey(
        Customer, on_delete=models.CASCADE, related_name="notifications", null=True, blank=True
    )
    invoice_id = models.BigIntegerField(null=True, blank=True)
    period_start = models.DateTimeField(null=True, blank=True)
    recipients = models.JSONField(default=list)
    subject = models.CharField(max_length=300)
    context = models.JSONField(default=dict, help_text="what the templates render")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    provider_message_id = models.CharField(max_length=200, blank=True, db_index=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "created_at"], name="notification_status")]

    def __str__(self) -> str:
        return f"{self.kind} {self.key} ({self.status})"


class OperatorWebhook(models.Model):
    """A signed POST to the operator's agent platform (OPERATOR_WEBHOOK_URL), retried with
    backoff until it gets a 2xx; `key` dedups the event, `event_id` is sent for the receiver."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed (gave up)"

    key = models.CharField(max_length=200, unique=True)
    event = models.CharField(max_length=64)  # budget.threshold_crossed | budget.paused | ...
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="+")
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.event} {self.key} ({self.status})"
