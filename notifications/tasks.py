"""Celery tasks of notifications: thin, idempotent, retried with backoff on transient errors."""

from __future__ import annotations

from celery import shared_task
from celery.contrib.django.task import DjangoTask
from django.utils import timezone

from notifications import services


@shared_task(
    base=DjangoTask,  # queued with delay_on_commit
    name="notifications.send_notification",
    ignore_result=True,
    autoretry_for=(OSError, ConnectionError),
    retry_backoff=True,
    retry_backoff_max=900,
    max_retries=8,
)
def send_notification(notification_id: int) -> None:
    services.send_notification(notification_id=notification_id)


@shared_task(
    base=DjangoTask,  # queued with delay_on_commit
    bind=True,
    name="notifications.deliver_operator_webhook",
    ignore_result=True,
    max_retries=10,
)
def deliver_operator_webhook(self, webhook_id: int) -> None:
    """POST a signed event to the operator; exponential backoff (with jitter) up to ~4 h."""
    try:
        services.deliver_operator_webhook(webhook_id=webhook_id)
    except services.WebhookNotDelivered as exc:
        if self.request.retries >= self.max_retries:
            services.give_up_operator_webhook(webhook_id=webhook_id, error=str(exc))
            return
        from celery.utils.time import get_exponential_backoff_interval

        countdown = get_exponential_backoff_interval(
            factor=2, retries=self.request.retries, maximum=14400, full_jitter=True
        )
        raise self.retry(exc=exc, countdown=countdown) from exc


@shared_task(name="notifications.send_usage_summaries", ignore_result=True)
def send_usage_summaries() -> int:
    """Beat, every minute: queue again any message whose send was lost, then queue the
    summary of any draft still without one (the billing cycle queues them as it closes)."""
    services.requeue_stale_messages(now=timezone.now())
    return services.queue_usage_summaries()
