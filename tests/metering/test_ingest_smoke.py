from datetime import UTC, datetime

import pytest

from metering.models import UsageEvent

pytestmark = pytest.mark.django_db


NOW = datetime.now(UTC).replace(microsecond=0)


def _event(**overrides):
    event = {
        "event_id": "evt-1",
        "customer_id": "acme",
        "meter": "llm_tokens",
        "quantity": 1500,
        "timestamp": NOW.isoformat(),
        "properties": {"agent_id": "a1"},
    }
    event.update(overrides)
    return event


def test_single_event_is_accepted_then_duplicate(api, customer, meters):
    response = api.post("/api/v1/events", _event(), format="json")
    assert response.status_code == 202, response.content
    assert response.json() == {
        "accepted": 1,
        "duplicates": 0,
        "conflicts": 0,
        "events": [{"event_id": "evt-1", "status": "accepted"}],
        "customers": {"acme": {"status": "active", "remaining_minor": None}},
    }
    again = api.post("/api/v1/events", _event(), format="json")
    assert again.json()["events"] == [{"event_id": "evt-1", "status": "duplicate"}]
    assert UsageEvent.objects.count() == 1
