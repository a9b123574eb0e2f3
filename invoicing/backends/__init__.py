"""Billing backends: where a finalized invoice goes to be charged.

`BILLING_BACKEND=local` (default) keeps invoices here (HTML document, e-mail); `stripe` creates
them in Stripe (only invoicing/stripe/client.py imports the stripe library). A backend's
`deliver_invoice` is called after the finalization has committed, never inside a transaction,
and must be idempotent: a retried delivery never charges twice.
"""

from __future__ import annotations

from functools import cache
from importlib import import_module

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from invoicing.backends.base import BillingBackend

BACKENDS = {
    "local": "invoicing.backends.local.LocalBackend",
    "stripe": "invoicing.backends.stripe.StripeBackend",
}


@cache
def _load(name: str) -> BillingBackend:
    try:
        path = BACKENDS[name]
    except KeyError:
        raise ImproperlyConfigured(
            f"BILLING_BACKEND must be one of {', '.join(BACKENDS)}, got {name!r}"
        ) from None
    module, _, cls = path.rpartition(".")
    return getattr(import_module(module), cls)()


def get_backend() -> BillingBackend:
    return _load(settings.BILLING_BACKEND)
