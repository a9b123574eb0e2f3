"""Thin receiver for anymail's tracking signal (delivery and bounce webhooks from the ESP)."""

from __future__ import annotations

from anymail.signals import tracking
from django.dispatch import receiver

from notifications import services


@receiver(tracking, dispatch_uid="notifications.tracking")
def on_tracking_event(sender, event, esp_name, **kwargs) -> None:
    services.record_tracking_event(
        message_id=event.message_id or "",
        event_type=event.event_type or "",
        recipient=event.recipient or "",
    )
