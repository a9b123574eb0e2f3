"""Helpers for the ingestion tests: event bodies, raw JSON and reading stored rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone

from metering.models import UsageEvent

EVENTS_URL = "/api/v1/events"
# The stored columns a test compares, spelled out so reads do not depend on unrelated columns.
STORED_FIELDS = (
    "customer__external_id",
    "event_id",
    "meter__code",
    "quantity",
    "timestamp",
    "properties",
    "fingerprint",
)


def iso(moment: datetime) -> str:
    """RFC 3339 in UTC with a `Z` suffix, e.g. 2026-01-31T12:00:00Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def recent(**delta: float) -> datetime:
    """An instant shortly before now (one hour ago by default), whole seconds, aware UTC."""
    moment = timezone.now() - timedelta(**(delta or {"hours": 1}))
    return moment.replace(microsecond=0)


# The default timestamp of make_event: one instant for the whole run (an hour before it began),
# so an event built twice is the same event. A fresh `recent()` per call gave a repeat built
# after a second boundary another timestamp, hence a conflict instead of a duplicate.
DEFAULT_TIMESTAMP = iso(recent())


def make_event(**overrides: Any) -> dict[str, Any]:
    """A valid event for customer `acme` on the `llm_tokens` (sum) meter; overrides win.

    Its timestamp is DEFAULT_TIMESTAMP unless overridden. An override of `...` (Ellipsis)
    removes the field.
    """
    event: dict[str, Any] = {
        "event_id": "evt-new",
        "customer_id": "acme",
        "meter": "llm_tokens",
        "quantity": 1500,
        "timestamp": DEFAULT_TIMESTAMP,
        "properties": {"agent_id": "a1"},
    }
    event.update(overrides)
    return {key: value for key, value in event.items() if value is not ...}


def with_raw(event: dict[str, Any], **raw_fields: str) -> str:
    """The event as JSON text with `raw_fields` spliced in verbatim (e.g. quantity="NaN")."""
    text = json.dumps({k: v for k, v in event.items() if k not in raw_fields})
    extra = "".join(f", {json.dumps(name)}: {raw}" for name, raw in raw_fields.items())
    return text[:-1] + extra + "}"


def batch(*events: dict[str, Any]) -> dict[str, Any]:
    return {"events": list(events)}


def post_raw(client, body: bytes | str, content_type: str = "application/json"):
    """POST a hand-made body to the ingestion endpoint."""
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    return client.generic("POST", EVENTS_URL, data, content_type=content_type)


def post_json(client, payload: Any):
    return post_raw(client, json.dumps(payload))


def stored_rows() -> list[dict[str, Any]]:
    """Every stored usage event, as dicts of STORED_FIELDS, in (customer, event_id) order."""
    return list(
        UsageEvent.objects.order_by("customer__external_id", "event_id").values(*STORED_FIELDS)
    )


def stored_row(event_id: str, customer_id: str = "acme") -> dict[str, Any]:
    return UsageEvent.objects.filter(customer__external_id=customer_id, event_id=event_id).values(
        *STORED_FIELDS
    )[0]


def statuses(response) -> list[tuple[str, str]]:
    return [(item["event_id"], item["status"]) for item in response.json()["events"]]
