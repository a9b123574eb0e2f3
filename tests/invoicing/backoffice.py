"""Helpers of the month-end back-office tests: a Finance-group user and its admin client."""

from __future__ import annotations

from django.contrib.auth.models import Group, User
from django.test import Client


def finance_user(username: str = "fiona") -> User:
    """A staff user whose only permissions come from the Finance group's data migrations."""
    user = User.objects.create_user(username, password="finance-password-1", is_staff=True)
    user.groups.add(Group.objects.get(name="Finance"))
    return user


def finance_client(user: User | None = None) -> Client:
    client = Client()
    client.force_login(user or finance_user())
    return client
