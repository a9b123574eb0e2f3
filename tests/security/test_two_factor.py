"""Optional two-factor admin login (django-otp TOTP, BILLING_ADMIN_2FA): with it on, a user who
has a confirmed TOTP device must give its current token; everyone else logs in as before."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.portal.conftest import PASSWORD

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"
TOKEN_REQUIRED = "Please enter your OTP token."
INVALID_TOKEN = "Invalid token. Please make sure you have entered it correctly."
T = timezone.now().replace(microsecond=0)


@pytest.fixture
def two_factor(settings):
    settings.BILLING_ADMIN_2FA = True


@pytest.fixture
def fran(db):
    user = User.objects.create_user("fran", password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name="Finance"))
    return user


@pytest.fixture
def phone(fran):
    return TOTPDevice.objects.create(user=fran, name="phone", confirmed=True)


def current_token(device: TOTPDevice) -> str:
    """The token the device shows now (at the travelled time)."""
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    return f"{totp.token():0{device.digits}d}"


def log_in(client: Client, token: str | None = None):
    form = {"username": "fran", "password": PASSWORD, "next": "/admin/"}
    if token is not None:
        form["otp_token"] = token
    return client.post(LOGIN, form)


def errors(response) -> str:
    return " ".join(response.content.decode().split())


def test_a_user_with_a_device_needs_the_right_token(two_factor, phone, client):
    with time_machine.travel(T, tick=False):
        without = log_in(client)
        right_now = current_token(phone)
        wrong = log_in(client, "000000" if right_now != "000000" else "111111")
    with time_machine.travel(T + timedelta(seconds=5), tick=False):  # past the 1 s back-off
        right = log_in(client, current_token(phone))
        index = client.get("/admin/")

    assert without.status_code == 200
    assert TOKEN_REQUIRED in errors(without)
    assert wrong.status_code == 200
    assert INVALID_TOKEN in errors(wrong)
    assert right.status_code == 302 and right["Location"] == "/admin/"
    assert index.status_code == 200


def test_the_right_token_does_not_replace_the_password(two_factor, phone, client):
    with time_machine.travel(T, tick=False):
        response = client.post(
            LOGIN, {"username": "fran", "password": "wrong", "otp_token": current_token(phone)}
        )

    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


def test_a_token_works_once(two_factor, phone):
    with time_machine.travel(T, tick=False):
        token = current_token(phone)
        first = log_in(Client(), token)
        replay = Client()
        second = log_in(replay, token)

    assert first.status_code == 302
    assert second.status_code == 200
    assert INVALID_TOKEN in errors(second)
    assert "_auth_user_id" not in replay.session


def test_users_without_a_confirmed_device_log_in_with_their_password(two_factor, fran, client):
    TOTPDevice.objects.create(user=fran, name="not yet set up", confirmed=False)
    page = client.get(LOGIN)
    response = log_in(client)

    assert 'name="otp_token"' in page.content.decode()
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_a_session_not_verified_by_the_device_is_sent_to_the_login(two_factor, fran, phone):
    client = Client()
    client.force_login(fran)  # password only: no device in the session

    response = client.get("/admin/")
    assert response.status_code == 302 and response["Location"] == "/admin/login/?next=/admin/"


def test_with_the_setting_off_no_token_is_asked(fran, phone, client):
    page = client.get(LOGIN)
    response = log_in(client)

    assert 'name="otp_token"' not in page.content.decode()
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200
