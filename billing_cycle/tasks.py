"""The billing cycle's beat task."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone


@shared_task(name="billing_cycle.run_billing_cycle", ignore_result=True)
def run_billing_cycle() -> dict[str, int]:
    """Every minute (beat): the billing cycle, with workers sending what it queues.

    It selects what is due at each run, so a missed run is caught up by the next one, and
    every step is idempotent, so a redelivered task changes nothing. What waits is not listed
    here (that reads every draft); `manage.py close_periods` prints it.
    """
    from billing_cycle import services

    return services.run_billing_cycle(now=timezone.now(), explain=False).counts()
