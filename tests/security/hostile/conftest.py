"""One world per test module, built inside a transaction that is rolled back when the module
ends: each test then runs in its own savepoint (pytest-django's), so a case that wrote would be
undone before the next one, and the world is built once, not once per case."""

from __future__ import annotations

import pytest
from django.db import transaction

from tests.security.hostile.world import World, build_world


@pytest.fixture(scope="module")
def module_world(django_db_setup, django_db_blocker) -> World:
    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
        try:
            yield build_world(raise_request_exception=False)
        finally:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)
