"""A database that is briefly unreachable is a 503 with Retry-After, never a bare 500."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from metering import services
from metering.models import UsageEvent
from tests.metering.helpers import make_event

pytestmark = pytest.mark.django_db


def test_database_unavailable_is_503_with_retry_after(api, customer, meters, monkeypatch):
    def unavailable(**kwargs):
        raise OperationalError("connection to server was lost")

    monkeypatch.setattr(services, "record_usage_events", unavailable)
    before = UsageEvent.objects.count()
    response = api.post("/api/v1/events", make_event(event_id="x-1"), format="json")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json() == {
        "errors": [
            {
                "index": None,
                "field": None,
                "message": "the service is briefly unavailable; retry the same request",
            }
        ]
    }
    assert UsageEvent.objects.count() == before
