"""The PostgreSQL statements that store a validated batch of events, and their parameters.

Free of Django on purpose: the service runs them on its connection's psycopg cursor, and the
ingestion benchmark runs the very same text through psycopg alone to measure the database's
own limit (bench/ingest.py). Rows arrive here already validated and resolved to primary keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

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


EVENT_COLUMNS = (
    "customer_id, meter_id, event_id, quantity, timestamp, properties, fingerprint, "
    "received_at, api_key_id"
)

# One statement claims the batch's keys in the global key table (skipping keys that exist:
# duplicates and conflicts), inserts the events whose keys it claimed into the partitioned
# events table, and adds them to their hourly rollups. Keys are claimed and rollup rows
# upserted in key order, so concurrent batches never deadlock. Arrays are passed whole: nine
# binary parameters whatever the batch size. Returns the keys it inserted.
INSERT_EVENTS = f"""
WITH input AS (
    SELECT * FROM unnest(
        %b::bigint[], %b::bigint[], %b::text[], %b::numeric[], %b::timestamptz[],
        %b::jsonb[], %b::text[]) AS u(c, m, e, q, t, p, f)
), claimed AS (
    INSERT INTO metering_usageeventkey (customer_id, event_id, fingerprint)
    SELECT c, e, f FROM input ORDER BY c, e
    ON CONFLICT (customer_id, event_id) DO NOTHING
    RETURNING customer_id, event_id
), ins AS (
    INSERT INTO metering_usageevent ({EVENT_COLUMNS})
    SELECT i.c, i.m, i.e, i.q, i.t, i.p, i.f, %b, %b
    FROM input i JOIN claimed k ON k.customer_id = i.c AND k.event_id = i.e
    RETURNING id, customer_id, meter_id, event_id, quantity, timestamp
), roll AS (
    INSERT INTO metering_usagerollup AS r (customer_id, meter_id, hour, quantity, event_count,
        max_quantity, latest_at, latest_event_pk, latest_quantity)
    SELECT customer_id, meter_id, date_trunc('hour', timestamp, 'UTC'), sum(quantity),
        count(*), max(quantity), max(timestamp),
        (array_agg(id ORDER BY timestamp DESC, id DESC))[1],
        (array_agg(quantity ORDER BY timestamp DESC, id DESC))[1]
    FROM ins GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (customer_id, meter_id, hour) DO UPDATE SET
        quantity = r.quantity + EXCLUDED.quantity,
        event_count = r.event_count + EXCLUDED.event_count,
        max_quantity = GREATEST(r.max_quantity, EXCLUDED.max_quantity),
        latest_at = CASE WHEN (EXCLUDED.latest_at, EXCLUDED.latest_event_pk)
            > (r.latest_at, r.latest_event_pk) THEN EXCLUDED.latest_at ELSE r.latest_at END,
        latest_quantity = CASE WHEN (EXCLUDED.latest_at, EXCLUDED.latest_event_pk)
            > (r.latest_at, r.latest_event_pk) THEN EXCLUDED.latest_quantity
            ELSE r.latest_quantity END,
        latest_event_pk = CASE WHEN (EXCLUDED.latest_at, EXCLUDED.latest_event_pk)
            > (r.latest_at, r.latest_event_pk) THEN EXCLUDED.latest_event_pk
            ELSE r.latest_event_pk END
)
SELECT customer_id, event_id FROM ins
"""  # noqa: S608 - no user input in the SQL text

# The stored fingerprints of keys the batch did not insert. A statement of its own: it sees
# keys committed by concurrent batches after INSERT_EVENTS took its snapshot.
STORED_FINGERPRINTS = """
SELECT k.customer_id, k.event_id, k.fingerprint
FROM metering_usageeventkey k
JOIN unnest(%b::bigint[], %b::text[]) AS u(c, e) ON k.customer_id = u.c AND k.event_id = u.e
"""


def candidates(rows: Sequence[EventRow]) -> tuple[dict[Key, EventRow], list[EventRow]]:
    """The first occurrence of each key (later ones are judged against it, exactly as if they
    came in a later request), and those rows in key order: concurrent batches then lock
    index entries in the same order."""
    first: dict[Key, EventRow] = {}
    for row in rows:
        first.setdefault((row.customer_pk, row.event_id), row)
    return first, sorted(first.values(), key=lambda r: (r.customer_pk, r.event_id))


def insert_params(
    rows: Sequence[EventRow], *, received_at: datetime, api_key_pk: int | None
) -> list[Any]:
    """The parameters of INSERT_EVENTS for rows (in key order, see candidates())."""
    return [
        [r.customer_pk for r in rows],
        [r.meter_pk for r in rows],
        [r.event_id for r in rows],
        [r.quantity for r in rows],
        [r.timestamp for r in rows],
        [r.properties_json for r in rows],
        [r.fingerprint for r in rows],
        received_at,
        api_key_pk,
    ]


def fingerprint_params(keys: Iterable[Key]) -> list[Any]:
    """The parameters of STORED_FINGERPRINTS for keys."""
    keys = list(keys)
    return [[c for c, _ in keys], [e for _, e in keys]]


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
