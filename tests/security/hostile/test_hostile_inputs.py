"""The hostile-input suite (cases.py): each case gets exactly its status, never a 5xx, and
changes no table's row count (except the attempt a failed login records), as the caller it
names. Login throttling is on, as in production.

The same cases run against a real server with the production settings in
test_production.py.
"""

from __future__ import annotations

import pytest

from tests.security.hostile.cases import CASES, Case
from tests.security.hostile.world import World, changed_tables, table_counts, world_values

pytestmark = pytest.mark.django_db


def send(world: World, case: Case, values: dict[str, object]):
    client = world.clients[case.role]
    extra = dict(case.headers)
    cookie = extra.pop("HTTP_COOKIE", None)
    if cookie is not None:
        client = type(client)(raise_request_exception=False)
        client.cookies.load(cookie)
    return client.generic(
        case.method,
        case.url(values),
        case.payload(values),
        content_type=case.content_type,
        **extra,
    )


@pytest.fixture
def throttled_world(module_world, settings):
    settings.AXES_ENABLED = True
    return module_world


@pytest.mark.parametrize("case", CASES, ids=[f"{c.area}-{c.id}" for c in CASES])
def test_a_hostile_request_gets_its_status_and_changes_nothing(throttled_world, case):
    values = world_values(throttled_world)
    before = table_counts()

    response = send(throttled_world, case, values)

    changed = changed_tables(before, table_counts())
    error = response.exc_info[1] if response.exc_info else None
    assert response.status_code < 500, f"{response.status_code}: {error!r}"
    assert response.status_code == case.status
    assert {name: new - old for name, (old, new) in changed.items()} == case.changes
    if case.error is not None:
        assert response.json()["errors"][0]["message"] == case.error
