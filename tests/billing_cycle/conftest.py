"""Fixtures for the billing cycle: invoicing's subscribed customer and its events, Stripe's
fake server, and a Celery broker that no worker reads."""

from __future__ import annotations

import pytest
from celery.app.task import Task

from tests.fake_stripe import fake_stripe, fake_stripe_server  # noqa: F401
from tests.invoicing.conftest import hourly_plan, record, subscribed  # noqa: F401


@pytest.fixture
def no_worker(monkeypatch):
    """Messages queued for Celery are kept here and never run: no worker is running (the
    unit tests otherwise run tasks eagerly, in-process)."""
    queued: list[tuple[str, tuple]] = []

    def apply_async(self, args=(), kwargs=None, **options):
        queued.append((self.name, tuple(args or ())))

    monkeypatch.setattr(Task, "apply_async", apply_async)
    return queued
