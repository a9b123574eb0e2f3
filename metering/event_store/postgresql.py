"""The PostgreSQL statements that store a validated batch of events, and their parameters.

Free of Django on purpose: the service runs them on its connection's psycopg cursor (with
server-side binding, see billing_project/db.py), and the ingestion benchmark runs the very same
text through psycopg alone to measure the database's own limit (bench/ingest.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from metering.aggregations import (
    ROLLUP_COLUMNS,
    ROLLUP_HOUR_SQL,
    ROLLUP_OF_EVENTS_SQL,
    rollup_merge_sql,
)
from metering.event_store import EVENT_COLUMNS, EventRow, Key

# One statement claims the batch's keys in the global key table (skipping keys that exist:
# duplicates and conflicts), inserts the events whose keys it claimed into the partitioned
# events table, and adds them to their hourly rollups (the rollup's columns and their merge
# come from metering.aggregations). Keys are claimed and rollup rows upserted in key order, so
# concurrent batches never deadlock. Arrays are passed whole: fourteen binary parameters whatever
# the batch size. A rollup row is per group too (UsageRollup: the group's key, names and values
# come computed with each row, and the key decides the row). Returns the keys it inserted.
INSERT_EVENTS = f"""
WITH input AS (
    SELECT * FROM unnest(
        %b::bigint[], %b::bigint[], %b::text[], %b::numeric[], %b::timestamptz[],
        %b::jsonb[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[]
    ) AS u(c, m, e, q, t, p, f, gn, g0, g1, g2, gk)
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
    INSERT INTO metering_usagerollup AS r (
        customer_id, meter_id, hour, group_key, dimension_names, dim_0, dim_1, dim_2,
        {ROLLUP_COLUMNS})
    SELECT customer_id, meter_id, {ROLLUP_HOUR_SQL}, i.gk, min(i.gn), min(i.g0), min(i.g1),
        min(i.g2), {ROLLUP_OF_EVENTS_SQL}
    FROM ins JOIN input i ON i.c = ins.customer_id AND i.e = ins.event_id
    GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (customer_id, meter_id, hour, group_key) DO UPDATE SET
        {rollup_merge_sql("postgresql", stored="r", new="EXCLUDED")}
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


def insert_params(
    rows: Sequence[EventRow], *, received_at: datetime, api_key_pk: int | None
) -> list[Any]:
    """The parameters of INSERT_EVENTS for rows (in key order, see event_store.candidates())."""
    return [
        [r.customer_pk for r in rows],
        [r.meter_pk for r in rows],
        [r.event_id for r in rows],
        [r.quantity for r in rows],
        [r.timestamp for r in rows],
        [r.properties_json for r in rows],
        [r.fingerprint for r in rows],
        [r.dimension_names for r in rows],
        [r.dimension_values[0] for r in rows],
        [r.dimension_values[1] for r in rows],
        [r.dimension_values[2] for r in rows],
        [r.group_key for r in rows],
        received_at,
        api_key_pk,
    ]


def fingerprint_params(keys: Iterable[Key]) -> list[Any]:
    """The parameters of STORED_FINGERPRINTS for keys."""
    keys = list(keys)
    return [[c for c, _ in keys], [e for _, e in keys]]


def insert_events(
    rows: list[EventRow], *, received_at: datetime, api_key_pk: int | None
) -> set[Key]:
    """Run INSERT_EVENTS on Django's connection; the keys it inserted."""
    from billing_project.db import server_binding_cursor

    with server_binding_cursor() as raw:
        # Prepared once per connection: planning this statement cost 2-5 ms per batch.
        raw.execute(
            INSERT_EVENTS,
            insert_params(rows, received_at=received_at, api_key_pk=api_key_pk),
            prepare=True,
        )
        return {(customer_pk, event_id) for customer_pk, event_id in raw.fetchall()}


def stored_fingerprints(keys: list[Key]) -> dict[Key, str]:
    """Run STORED_FINGERPRINTS on Django's connection."""
    from billing_project.db import server_binding_cursor

    with server_binding_cursor() as raw:
        raw.execute(STORED_FINGERPRINTS, fingerprint_params(keys), prepare=True)
        return {(customer_pk, event_id): fp for customer_pk, event_id, fp in raw.fetchall()}
