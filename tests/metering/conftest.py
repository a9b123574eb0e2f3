"""Fixtures for the metering tests: more keys and customers, and one event stored up front."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from metering import services
from metering.models import Customer, UsageEvent
from tests.factories import CustomerFactory, MeterFactory
from tests.metering.helpers import make_event, post_json


def client_with(authorization: str | None) -> APIClient:
    client = APIClient()
    if authorization is not None:
        client.credentials(HTTP_AUTHORIZATION=authorization)
    return client


@pytest.fixture
def archived_customer(db):
    return CustomerFactory(external_id="oldco", status=Customer.Status.ARCHIVED)


@pytest.fixture
def inactive_meter(db):
    return MeterFactory(code="retired_meter", aggregation="sum", is_active=False)


@pytest.fixture
def scoped_key(other_customer):
    """(ApiKey, plaintext) for a key scoped to `globex`."""
    return services.create_api_key(name="globex fleet", customer=other_customer)


@pytest.fixture
def clients(service_key, scoped_key):
    """API clients by the credentials they present, valid and invalid."""
    revoked_key, revoked_plain = services.create_api_key(name="revoked")
    services.revoke_api_key(api_key=revoked_key)
    _, expired_plain = services.create_api_key(
        name="expired", expires_at=timezone.now() - timedelta(seconds=1)
    )
    return {
        "service": client_with(f"Bearer {service_key[1]}"),
        "scoped": client_with(f"Bearer {scoped_key[1]}"),
        "none": client_with(None),
        "basic": client_with(f"Basic {service_key[1]}"),
        "unknown": client_with("Bearer mk_AAAAAAAA_" + "A" * 40),
        "revoked": client_with(f"Bearer {revoked_plain}"),
        "expired": client_with(f"Bearer {expired_plain}"),
    }


@pytest.fixture
def stored_event(api, customer, meters):
    """One event already stored (`stored-1`), so "nothing changed" is a meaningful check."""
    response = post_json(api, make_event(event_id="stored-1", quantity=7))
    assert response.status_code == 202, response.content
    assert UsageEvent.objects.count() == 1
    return response
