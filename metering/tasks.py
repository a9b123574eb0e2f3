"""Celery tasks of metering."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from metering import partitions


@shared_task(name="metering.ensure_event_partitions", ignore_result=True)
def ensure_event_partitions() -> list[str]:
    """Hourly (beat): keep the events table's monthly partitions three months ahead."""
    return partitions.ensure_event_partitions(now=timezone.now())
