"""The SQLite statements that store a validated batch of events (the embedded default).

SQLite has no data-modifying CTEs, so the PostgreSQL statement becomes three, in the caller's
transaction (SQLite serializes writers, so nothing interleaves): claim the keys, insert the
events of the keys claimed, and upsert their hourly rollups. The rollups' partials are merged
in Python (`metering.aggregations.Partial`, over the rows in hand) and into the stored rows in
SQL (`rollup_merge_sql`, exact decimal functions of billing_project/sqlite).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Q

from metering import aggregations
from metering.event_store import EVENT_COLUMNS, EventRow, Key
from metering.models import QUANTITY, TOTAL_QUANTITY, UsageEventKey

_EVENT_PLACEHOLDERS = "(%s, %s, %s, %s, %s, %s, %s, %s, %s)"
_ROLLUP_PLACEHOLDERS = "(" + ", ".join(["%s"] * 14) + ")"


def insert_events(
    rows: list[EventRow], *, received_at: datetime, api_key_pk: int | None
) -> set[Key]:
    """Claim the keys of rows, insert the events of the keys claimed, add them to their
    hourly rollups; the keys inserted."""
    ops = connection.ops
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO metering_usageeventkey (customer_id, event_id, fingerprint) VALUES "  # noqa: S608
            + ", ".join(["(%s, %s, %s)"] * len(rows))
            + " ON CONFLICT (customer_id, event_id) DO NOTHING RETURNING customer_id, event_id",
            [value for r in rows for value in (r.customer_pk, r.event_id, r.fingerprint)],
        )
        claimed = {(customer_pk, event_id) for customer_pk, event_id in cursor.fetchall()}
        new_rows = [r for r in rows if (r.customer_pk, r.event_id) in claimed]
        if not new_rows:
            return set()
        received = ops.adapt_datetimefield_value(received_at)
        params: list[Any] = []
        for r in new_rows:
            params += [
                r.customer_pk,
                r.meter_pk,
                r.event_id,
                _quantity(r.quantity),
                ops.adapt_datetimefield_value(r.timestamp),
                r.properties_json,
                r.fingerprint,
                received,
                api_key_pk,
            ]
        cursor.execute(
            f"INSERT INTO metering_usageevent ({EVENT_COLUMNS}) "  # noqa: S608 - placeholders only
            f"VALUES {', '.join([_EVENT_PLACEHOLDERS] * len(new_rows))} "
            "RETURNING id, customer_id, event_id",
            params,
        )
        inserted = {(customer_pk, event_id): pk for pk, customer_pk, event_id in cursor.fetchall()}
        by_key = {(r.customer_pk, r.event_id): r for r in new_rows}
        _add_to_rollups(cursor, [(pk, by_key[key]) for key, pk in inserted.items()])
    return set(inserted)


def _add_to_rollups(cursor: Any, events: list[tuple[int, EventRow]]) -> None:
    """One upsert of the rollup rows of the inserted events, in (customer, meter, hour) order."""
    groups: dict[tuple[int, int, datetime, str], aggregations.Partial] = {}
    group_of: dict[str, EventRow] = {}  # a group key -> a row of it (its names and values)
    for pk, row in events:
        key = (
            row.customer_pk,
            row.meter_pk,
            aggregations.rollup_hour(row.timestamp),
            row.group_key,
        )
        group_of.setdefault(row.group_key, row)
        one = aggregations.Partial.of_event(pk=pk, at=row.timestamp, quantity=row.quantity)
        found = groups.get(key)
        groups[key] = one if found is None else found.merge(one)
    ops = connection.ops
    params: list[Any] = []
    for (customer_pk, meter_pk, hour, group_key), partial in sorted(groups.items()):
        total, count, top, latest_at, latest_pk, latest_quantity = aggregations.rollup_row(partial)
        group = group_of[group_key]
        params += [
            customer_pk,
            meter_pk,
            ops.adapt_datetimefield_value(hour),
            group_key,
            group.dimension_names,
            *group.dimension_values,
            ops.adapt_decimalfield_value(
                total, TOTAL_QUANTITY["max_digits"], TOTAL_QUANTITY["decimal_places"]
            ),
            count,
            _quantity(top),
            ops.adapt_datetimefield_value(latest_at),
            latest_pk,
            _quantity(latest_quantity),
        ]
    cursor.execute(
        "INSERT INTO metering_usagerollup AS r "  # noqa: S608 - placeholders only
        "(customer_id, meter_id, hour, group_key, dimension_names, dim_0, dim_1, dim_2, "
        f"{aggregations.ROLLUP_COLUMNS}) "
        f"VALUES {', '.join([_ROLLUP_PLACEHOLDERS] * len(groups))} "
        "ON CONFLICT (customer_id, meter_id, hour, group_key) DO UPDATE SET "
        + aggregations.rollup_merge_sql("sqlite", stored="r", new="excluded"),
        params,
    )


def _quantity(value: Any) -> Any:
    return connection.ops.adapt_decimalfield_value(
        value, QUANTITY["max_digits"], QUANTITY["decimal_places"]
    )


def stored_fingerprints(keys: list[Key]) -> dict[Key, str]:
    """The stored fingerprints of keys (one query)."""
    by_customer: dict[int, list[str]] = {}
    for customer_pk, event_id in keys:
        by_customer.setdefault(customer_pk, []).append(event_id)
    condition = Q()
    for customer_pk, event_ids in by_customer.items():
        condition |= Q(customer_id=customer_pk, event_id__in=event_ids)
    return {
        (customer_pk, event_id): fp
        for customer_pk, event_id, fp in UsageEventKey.objects.filter(condition).values_list(
            "customer_id", "event_id", "fingerprint"
        )
    }
