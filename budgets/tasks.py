"""Celery tasks of the budgets: thin and safe to run twice."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from budgets import services


@shared_task(name="budgets.check_budgets", ignore_result=True)
def check_budgets() -> int:
    """Beat, every minute: re-check capped and paused customers."""
    return services.check_all_budgets(now=timezone.now())
