"""Sign-in forms bound every text field to its column: a username longer than Django's 150
characters (django-axes records at most 255) is refused by the form, before any password check
or attempt record, on the portal, the admin and the admin's two-factor login."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt, AccessFailureLog
from django.contrib.auth.models import User

from tests.portal.conftest import make_portal_customer

pytestmark = pytest.mark.django_db

LOGINS = ["/portal/login/", "/admin/login/"]
TOO_LONG = "Ensure this value has at most 150 characters"


@pytest.fixture(autouse=True)
def login_throttle(settings):
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 5
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)


@pytest.fixture
def acme(db):
    return make_portal_customer("acme")


def attempts() -> tuple[int, int, int]:
    return AccessAttempt.objects.count(), AccessFailureLog.objects.count(), User.objects.count()


@pytest.mark.parametrize("url", LOGINS)
@pytest.mark.parametrize("length", [151, 256, 10_000])
@pytest.mark.parametrize("two_factor", [False, True])
def test_an_over_long_username_is_refused_by_the_form(
    acme, client, settings, url, length, two_factor
):
    settings.BILLING_ADMIN_2FA = two_factor
    before = attempts()

    response = client.post(url, {"username": "u" * length, "password": "whatever"})

    assert response.status_code == 200
    assert TOO_LONG in response.content.decode()
    assert attempts() == before


@pytest.mark.parametrize("url", LOGINS)
def test_a_username_of_the_column_length_is_an_ordinary_failed_login(acme, client, url):
    response = client.post(url, {"username": "u" * 150, "password": "whatever"})

    assert response.status_code == 200
    assert TOO_LONG not in response.content.decode()
    assert list(AccessAttempt.objects.values_list("username", "failures_since_start")) == [
        ("u" * 150, 1)
    ]


def test_the_second_factor_fields_are_bounded(acme, client, settings):
    settings.BILLING_ADMIN_2FA = True
    before = attempts()

    response = client.post(
        "/admin/login/",
        {
            "username": "acme-user",
            "password": "x",
            "otp_token": "1" * 10_000,
            "otp_device": "d" * 10_000,
        },
    )

    assert response.status_code == 200
    errors = response.context["form"].errors
    assert errors["otp_token"] == ["Ensure this value has at most 16 characters (it has 10000)."]
    assert errors["otp_device"] == ["Ensure this value has at most 100 characters (it has 10000)."]
    assert attempts()[2] == before[2]
