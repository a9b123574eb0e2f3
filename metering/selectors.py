"""Reads of the metering app, for its own views and for the other apps."""

from __future__ import annotations

import hmac

from django.db.models import QuerySet
from django.utils import timezone

from metering.keys import hash_key
from metering.models import ApiKey, Customer, Meter, UsageEvent


def get_usable_api_key(*, plaintext: str) -> ApiKey | None:
    """Return the key for a presented secret if it exists, is not revoked and not expired."""
    digest = hash_key(plaintext)
    api_key = ApiKey.objects.select_related("customer").filter(key_hash=digest).first()
    if api_key is None or not hmac.compare_digest(api_key.key_hash, digest):
        return None
    if api_key.revoked_at is not None:
        return None
    if api_key.expires_at is not None and api_key.expires_at <= timezone.now():
        return None
    return api_key


def list_active_meters() -> QuerySet[Meter]:
    return Meter.objects.filter(is_active=True).order_by("code")


def get_customer_visible_to_key(*, api_key: ApiKey, external_id: str) -> Customer | None:
    """The customer with this external id, if the key may act for it (None otherwise)."""
    customer = Customer.objects.filter(external_id=external_id).first()
    if customer is None:
        return None
    if api_key.customer_id is not None and api_key.customer_id != customer.pk:
        return None
    return customer


def meter_has_usage(*, meter: Meter) -> bool:
    return UsageEvent.objects.filter(meter=meter).exists()
