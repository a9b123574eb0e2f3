"""/admin/ is for active staff who are superusers or in a back-office group (Finance by
default, BILLING_ADMIN_GROUPS): anyone else gets the admin login page, which refuses them."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from tests.portal.conftest import PASSWORD

pytestmark = pytest.mark.django_db

ADMIN = "/admin/"
INVOICES = "/admin/invoicing/invoice/"
REFUSED = (
    "Please enter the correct username and password for a staff account. Note that both "
    "fields may be case-sensitive."
)


def make_user(username: str, *, groups: tuple[str, ...] = (), **flags) -> User:
    user = User.objects.create_user(username, password=PASSWORD, **flags)
    for name in groups:
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    return user


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    ("flags", "groups", "allowed"),
    [
        ({"is_staff": True, "is_superuser": True}, (), True),
        ({"is_staff": True}, ("Finance",), True),
        ({"is_staff": True}, (), False),
        ({"is_staff": True}, ("Support",), False),
        ({"is_staff": False}, ("Finance",), False),
        ({"is_staff": True, "is_active": False}, ("Finance",), False),
        ({"is_staff": False, "is_superuser": True}, (), False),
    ],
    ids=[
        "superuser",
        "finance-staff",
        "staff-without-group",
        "staff-in-another-group",
        "finance-not-staff",
        "inactive-finance-staff",
        "superuser-not-staff",
    ],
)
def test_who_may_use_the_admin(flags, groups, allowed):
    client = logged_in(make_user("someone", groups=groups, **flags))
    index = client.get(ADMIN)
    invoices = client.get(INVOICES)

    if allowed:
        assert index.status_code == 200
        assert invoices.status_code == 200
    else:
        assert index.status_code == 302 and index["Location"] == "/admin/login/?next=/admin/"
        assert invoices.status_code == 302
        assert invoices["Location"] == "/admin/login/?next=/admin/invoicing/invoice/"


def test_staff_without_the_group_cannot_log_in(client):
    make_user("sam", is_staff=True)
    response = client.post("/admin/login/", {"username": "sam", "password": PASSWORD})

    assert response.status_code == 200
    assert REFUSED in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_finance_staff_log_in_with_their_password(client):
    make_user("fran", is_staff=True, groups=("Finance",))
    form = {"username": "fran", "password": PASSWORD, "next": "/admin/"}  # as the page posts it
    response = client.post("/admin/login/", form)

    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get(ADMIN).status_code == 200


def test_a_signed_in_outsider_is_told_on_the_login_page():
    client = logged_in(make_user("sam", is_staff=True))
    page = client.get("/admin/login/?next=/admin/")

    assert page.status_code == 200
    text = " ".join(page.content.decode().split())
    assert "You are authenticated as sam, but are not authorized to access this page." in text


def test_the_groups_are_a_setting(settings):
    client = logged_in(make_user("aud", is_staff=True, groups=("Auditors",)))
    assert client.get(ADMIN).status_code == 302

    settings.BILLING_ADMIN_GROUPS = ["Finance", "Auditors"]
    assert client.get(ADMIN).status_code == 200
    assert client.get(INVOICES).status_code == 403  # in the admin, but no invoice permission
