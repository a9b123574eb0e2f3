"""Stripe settings fail loudly in production when a secret is missing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

BASE = {
    "BILLING_ENV": "production",
    "SECRET_KEY": "x" * 50,
    "DATABASE_URL": "postgres://nobody@127.0.0.1:9/none",
    "ALLOWED_HOSTS": "billing.example",
}


def load_settings(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "BILLING_"))}
    return subprocess.run(
        [sys.executable, "-c", "import billing_project.settings"],
        env={**clean, **BASE, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"BILLING_BACKEND": "stripe"}, "STRIPE_API_KEY"),
        ({"BILLING_BACKEND": "stripe", "STRIPE_API_KEY": "sk_live_x"}, "STRIPE_WEBHOOK_SECRET"),
        ({"STRIPE_USAGE_REPORTING": "close"}, "STRIPE_API_KEY"),
        ({"STRIPE_COLLECTION_METHOD": "cash"}, "STRIPE_COLLECTION_METHOD"),
    ],
)
def test_production_refuses_to_start_without_stripe_secrets(env, missing):
    result = load_settings(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and missing in result.stderr


def test_production_starts_with_them():
    result = load_settings(
        BILLING_BACKEND="stripe", STRIPE_API_KEY="sk_live_x", STRIPE_WEBHOOK_SECRET="whsec_x"
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [
        ("p" * 75, "STRIPE_KEY_PREFIX is 75 characters; at most 74"),
        ("", "STRIPE_KEY_PREFIX is empty"),
        ("eu billing", "printable ASCII without spaces"),
    ],
)
def test_a_key_prefix_stripe_could_not_take_stops_every_command(prefix, problem):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        env={**env, "STRIPE_KEY_PREFIX": prefix},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "billing_project.E002" in result.stderr and problem in result.stderr


def test_the_longest_prefix_allowed_fits_stripes_identifier_limit(settings):
    from billing_project.checks import stripe_key_prefix_errors
    from invoicing.stripe import client

    settings.STRIPE_KEY_PREFIX = "p" * client.KEY_PREFIX_MAX
    assert stripe_key_prefix_errors() == []
    assert len(client.identifier(f"usage-{2**63 - 1}")) == client.IDENTIFIER_MAX
