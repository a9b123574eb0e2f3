"""Shared fixtures: a fast password hasher, a private cache, no login throttling, an API client,
customers, meters and keys; and the refusal to run tests whose programs are missing."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from metering import services
from tests import tools
from tests.factories import CustomerFactory, MeterFactory


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _private_cache(settings):
    """Each test counts API rate limits in a fresh in-process cache, not the one under var/."""
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "tests"}
    }
    cache.clear()


@pytest.fixture(autouse=True)
def _fresh_period_prices():
    """The per-process cache of plan prices (invoicing.selectors, keyed by plan id) starts empty
    in every test: SQLite hands out the ids of a rolled-back test's rows again, so another
    test's plan would otherwise be priced from the cache."""
    from invoicing import selectors

    selectors._period_prices.clear()


@pytest.fixture(autouse=True)
def _no_login_throttle(settings):
    """Login throttling is off: Django's test client logs in without a request, which
    django-axes refuses. tests/security turns it on where it is tested."""
    settings.AXES_ENABLED = False


@pytest.fixture(autouse=True)
def _eager_celery():
    """Unit tests run tasks in-process; the end-to-end tests start a real worker instead."""
    from billing_project.celery import app

    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager = False


@pytest.fixture
def customer(db):
    return CustomerFactory(external_id="acme", name="Acme Corp")


@pytest.fixture
def other_customer(db):
    return CustomerFactory(external_id="globex", name="Globex")


@pytest.fixture
def meters(db):
    """The three demo meters, keyed by code."""
    return {
        "agent_tasks": MeterFactory(code="agent_tasks", unit="task", aggregation="count"),
        "llm_tokens": MeterFactory(code="llm_tokens", unit="token", aggregation="sum"),
        "agent_minutes": MeterFactory(code="agent_minutes", unit="minute", aggregation="sum"),
    }


@pytest.fixture
def service_key(db):
    """(ApiKey, plaintext) for a service-wide key."""
    return services.create_api_key(name="service")


@pytest.fixture
def api(service_key):
    """An API client authenticated with the service-wide key."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {service_key[1]}")
    return client


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what will not run
def pytest_collection_modifyitems(config, items):
    """Refuse the whole run, before any test, when a selected test needs a program this
    machine lacks (`@pytest.mark.needs(...)`, tests/tools.py): never a silent skip.

    Tests marked `postgres` cannot run elsewhere: on another engine they are skipped with
    a reason (the SQLite pass of `make test` deselects them with -m "not postgres")."""
    from django.db import connection

    needing = [item for item in items if any(item.iter_markers("needs"))]
    absent = tools.missing(
        name for item in needing for mark in item.iter_markers("needs") for name in mark.args
    )
    if absent:
        tests = sum(
            1
            for item in needing
            if any(set(mark.args) & set(absent) for mark in item.iter_markers("needs"))
        )
        pytest.exit(tools.refusal(absent, tests=tests), returncode=pytest.ExitCode.USAGE_ERROR)

    if connection.vendor == "postgresql":
        return
    skip = pytest.mark.skip(reason=f"PostgreSQL only; this run uses {connection.vendor}")
    for item in items:
        if item.get_closest_marker("postgres"):
            item.add_marker(skip)
