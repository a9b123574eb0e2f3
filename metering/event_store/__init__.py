"""Storing a validated batch of events exactly once: what both engines share, and the entry
points that run the engine's own statements.

The SQL is engine-specific and lives in one module per engine: `postgresql.py` (one
statement: keys claimed, events inserted, hourly rollups updated, binary arrays, prepared per
connection) and `sqlite.py` (the embedded default: three statements, writers serialized by
SQLite). Both write the rollups as `metering.aggregations` defines them. Rows arrive here
already validated and resolved to primary keys; nothing here needs Django configured except
the two entry points (the ingestion benchmark imports the PostgreSQL statements alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import ModuleType

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
CONFLICT = "conflict"

Key = tuple[int, str]  # (customer pk, event id): unique for ever


@dataclass(frozen=True, slots=True)
class EventRow:
    """One valid event, resolved: what is stored, and its payload's fingerprint."""

    index: int  # position in the request
    customer_pk: int
    meter_pk: int
    event_id: str
    quantity: Decimal
    timestamp: datetime  # aware
    properties_json: str  # canonical JSON text
    fingerprint: str
    # Its hourly rollup's group (DESIGN 4a, UsageRollup): the dimension names of the meter's
    # rate card in the customer's current plan as text ("" for none), the event's values of
    # them (padded to three with None) and the group's key.
    dimension_names: str = ""
    dimension_values: tuple[str | None, str | None, str | None] = (None, None, None)
    group_key: str = ""


EVENT_COLUMNS = (
    "customer_id, meter_id, event_id, quantity, timestamp, properties, fingerprint, "
    "received_at, api_key_id"
)


def candidates(rows: Sequence[EventRow]) -> tuple[dict[Key, EventRow], list[EventRow]]:
    """The first occurrence of each key (later ones are judged against it, exactly as if they
    came in a later request), and those rows in key order: concurrent batches then lock
    index entries in the same order."""
    first: dict[Key, EventRow] = {}
    for row in rows:
        first.setdefault((row.customer_pk, row.event_id), row)
    return first, sorted(first.values(), key=lambda r: (r.customer_pk, r.event_id))


def insert_events(
    rows: list[EventRow], *, received_at: datetime, api_key_pk: int | None
) -> set[Key]:
    """Insert the new keys and events of `rows` (in key order, see candidates()) and add them
    to their hourly rollups, on Django's connection inside its transaction; returns the keys
    inserted (the others are duplicates or conflicts)."""
    return _engine().insert_events(rows, received_at=received_at, api_key_pk=api_key_pk)


def stored_fingerprints(keys: list[Key]) -> dict[Key, str]:
    """The fingerprints stored for keys, read after the insert (in a statement of its own, so
    it sees keys that concurrent batches committed meanwhile)."""
    return _engine().stored_fingerprints(keys)


def _engine() -> ModuleType:
    """The module of the connection's engine (imported here: the modules import this one)."""
    from django.db import connection

    if connection.vendor == "postgresql":
        from metering.event_store import postgresql

        return postgresql
    from metering.event_store import sqlite

    return sqlite


def statuses(
    rows: Sequence[EventRow],
    *,
    first: dict[Key, EventRow],
    inserted: set[Key],
    stored: dict[Key, str],
) -> list[tuple[str, str]]:
    """(event id, status) in request order: `accepted` for the first occurrence of a key the
    batch inserted; otherwise `duplicate` or `conflict` by the reference fingerprint (the
    stored one, or the batch's first occurrence when this batch inserted the key)."""
    result: list[tuple[str, str]] = []
    seen: set[Key] = set()
    for row in rows:
        key = (row.customer_pk, row.event_id)
        if key in inserted and key not in seen:
            status = ACCEPTED
        else:
            reference = first[key].fingerprint if key in inserted else stored[key]
            status = DUPLICATE if reference == row.fingerprint else CONFLICT
        seen.add(key)
        result.append((row.event_id, status))
    return result
