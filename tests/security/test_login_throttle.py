"""Login throttling (django-axes) on the portal and the admin login: after five failures for
one username from one address that pair is refused with 429, before any password is checked,
until fifteen minutes pass without an attempt; a successful login clears the count."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from axes.models import AccessAttempt
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone

from tests.portal.conftest import PASSWORD, make_portal_customer

pytestmark = pytest.mark.django_db

PORTAL_LOGIN = "/portal/login/"
ADMIN_LOGIN = "/admin/login/"
WRONG = "not-the-password"
PORTAL_LOCKED = (
    "Too many failed sign-ins for this username from your address. Signing in is paused for "
    "15 minutes; each new attempt restarts the wait."
)
ADMIN_LOCKED = (
    "Too many failed logins for this username from your address. Logins are refused for "
    "15 minutes; each new attempt restarts the wait."
)
T = timezone.now().replace(microsecond=0)


@pytest.fixture(autouse=True)
def login_throttle(settings):
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 5
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)


@pytest.fixture
def acme(db):
    return make_portal_customer("acme")


@pytest.fixture
def password_checks(monkeypatch):
    """How many times Django's model backend checked a password."""
    calls: list[str] = []
    original = ModelBackend.authenticate

    def counting(self, request, username=None, password=None, **kwargs):
        calls.append(username)
        return original(self, request, username=username, password=password, **kwargs)

    monkeypatch.setattr(ModelBackend, "authenticate", counting)
    return calls


def log_in(client: Client, url: str, username: str, password: str, ip: str = "10.0.0.1"):
    return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=ip)


def failures(username: str) -> list[tuple[str, int]]:
    return list(
        AccessAttempt.objects.filter(username=username).values_list(
            "ip_address", "failures_since_start"
        )
    )


def test_the_portal_refuses_the_sixth_attempt_without_checking_the_password(
    acme, client, password_checks
):
    with time_machine.travel(T, tick=False):
        first = [log_in(client, PORTAL_LOGIN, "acme-user", WRONG) for _ in range(4)]
        fifth = log_in(client, PORTAL_LOGIN, "acme-user", WRONG)
        checked_before = len(password_checks)
        right = log_in(client, PORTAL_LOGIN, "acme-user", PASSWORD)

    assert [r.status_code for r in first] == [200] * 4
    assert "Please enter a correct username and password." in first[0].content.decode()
    assert fifth.status_code == 429
    assert fifth["Retry-After"] == "900"
    assert PORTAL_LOCKED in fifth.content.decode()
    assert right.status_code == 429
    assert right["Retry-After"] == "900"
    assert PORTAL_LOCKED in right.content.decode()
    assert checked_before == 5
    assert len(password_checks) == 5  # the locked attempt never reached the password
    assert "_auth_user_id" not in client.session
    assert failures("acme-user") == [("10.0.0.1", 6)]


def test_the_lock_is_per_username_and_address(acme, client):
    make_portal_customer("globex")
    with time_machine.travel(T, tick=False):
        for _ in range(5):
            log_in(client, PORTAL_LOGIN, "acme-user", WRONG)
        other_address = log_in(Client(), PORTAL_LOGIN, "acme-user", PASSWORD, ip="10.0.0.2")
        other_user = log_in(Client(), PORTAL_LOGIN, "globex-user", PASSWORD)
        still_locked = log_in(Client(), PORTAL_LOGIN, "acme-user", PASSWORD)

    assert other_address.status_code == 302 and other_address["Location"] == "/portal/"
    assert other_user.status_code == 302 and other_user["Location"] == "/portal/"
    assert still_locked.status_code == 429


def test_a_successful_login_clears_the_count(acme, client):
    with time_machine.travel(T, tick=False):
        for _ in range(4):
            log_in(client, PORTAL_LOGIN, "acme-user", WRONG)
        assert failures("acme-user") == [("10.0.0.1", 4)]
        success = log_in(client, PORTAL_LOGIN, "acme-user", PASSWORD)
        assert failures("acme-user") == []
        client.post("/portal/logout/")
        again = [log_in(client, PORTAL_LOGIN, "acme-user", WRONG).status_code for _ in range(4)]

    assert success.status_code == 302
    assert again == [200] * 4
    assert failures("acme-user") == [("10.0.0.1", 4)]


def test_the_lock_ends_fifteen_minutes_after_the_last_attempt(acme, client):
    with time_machine.travel(T, tick=False):
        for _ in range(5):
            log_in(client, PORTAL_LOGIN, "acme-user", WRONG)
    with time_machine.travel(T + timedelta(minutes=10), tick=False):
        assert log_in(client, PORTAL_LOGIN, "acme-user", PASSWORD).status_code == 429
    with time_machine.travel(T + timedelta(minutes=24, seconds=59), tick=False):
        # refused attempts restart the wait: 15 minutes after the one at +10 min
        assert log_in(client, PORTAL_LOGIN, "acme-user", PASSWORD).status_code == 429
    with time_machine.travel(T + timedelta(minutes=40), tick=False):
        response = log_in(client, PORTAL_LOGIN, "acme-user", PASSWORD)

    assert response.status_code == 302 and response["Location"] == "/portal/"
    assert failures("acme-user") == []


def test_the_admin_login_is_throttled_the_same_way(client, password_checks):
    finance = User.objects.create_user("fran", password=PASSWORD, is_staff=True)
    finance.groups.add(Group.objects.get(name="Finance"))
    with time_machine.travel(T, tick=False):
        first = [log_in(client, ADMIN_LOGIN, "fran", WRONG) for _ in range(4)]
        fifth = log_in(client, ADMIN_LOGIN, "fran", WRONG)
        right = log_in(client, ADMIN_LOGIN, "fran", PASSWORD)

    assert [r.status_code for r in first] == [200] * 4
    assert fifth.status_code == 429
    assert right.status_code == 429
    assert right["Retry-After"] == "900"
    assert ADMIN_LOCKED in right.content.decode()
    assert len(password_checks) == 5
    assert "_auth_user_id" not in client.session
    assert failures("fran") == [("10.0.0.1", 6)]


def test_the_limit_and_the_wait_are_settings(acme, client, settings):
    settings.AXES_FAILURE_LIMIT = 2
    settings.AXES_COOLOFF_TIME = timedelta(seconds=90)
    with time_machine.travel(T, tick=False):
        first = log_in(client, PORTAL_LOGIN, "acme-user", WRONG)
        second = log_in(client, PORTAL_LOGIN, "acme-user", WRONG)

    assert first.status_code == 200
    assert second.status_code == 429
    assert second["Retry-After"] == "90"
    assert "Signing in is paused for 2 minutes" in second.content.decode()


def test_throttling_can_be_turned_off(acme, client, settings):
    settings.AXES_ENABLED = False
    statuses = [log_in(client, PORTAL_LOGIN, "acme-user", WRONG).status_code for _ in range(7)]

    assert statuses == [200] * 7
    assert log_in(client, PORTAL_LOGIN, "acme-user", PASSWORD).status_code == 302
    assert AccessAttempt.objects.count() == 0
