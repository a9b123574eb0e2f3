"""Monthly range partitions of the events table on PostgreSQL, created ahead of time.

The table has a DEFAULT partition, so an insert never fails for want of a partition; the
scheduled task keeps the current and the next months' partitions in place so the default
stays empty. If rows did land in the default partition for a month, creating that month moves
them into the new partition in the same transaction. SQLite keeps a plain table.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction

TABLE = "metering_usageevent"
DEFAULT = f"{TABLE}_default"


def month_start(moment: datetime, offset: int = 0) -> datetime:
    index = moment.year * 12 + moment.month - 1 + offset
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition_name(start: datetime) -> str:
    return f"{TABLE}_p{start:%Y%m}"


def is_partitioned() -> bool:
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_partitioned_table WHERE partrelid = %s::regclass", [TABLE])
        return cursor.fetchone() is not None


def existing_partitions() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            [TABLE],
        )
        return {row[0] for row in cursor.fetchall()}


def create_month(start: datetime) -> bool:
    """Create the partition of the month starting at `start` (UTC); False if it exists."""
    name = partition_name(start)
    end = month_start(start, 1)
    if name in existing_partitions():
        return False
    with transaction.atomic(), connection.cursor() as cursor:
        # Rows for this month in the default partition move in the same transaction, since
        # attaching a range that the default partition holds rows of is refused.
        cursor.execute(f"LOCK TABLE {TABLE} IN SHARE ROW EXCLUSIVE MODE")
        cursor.execute(
            f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )
        cursor.execute(
            f"WITH moved AS (DELETE FROM {DEFAULT} WHERE timestamp >= %s AND timestamp < %s "  # noqa: S608
            f"RETURNING *) INSERT INTO {name} SELECT * FROM moved",
            [start, end],
        )
        cursor.execute(
            f"ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES FROM (%s) TO (%s)",
            [start, end],
        )
    return True


def ensure_event_partitions(*, now: datetime, months_ahead: int = 3) -> list[str]:
    """Create the partitions from the month of the oldest acceptable event timestamp to
    `months_ahead` months ahead (idempotent)."""
    if not is_partitioned():
        return []
    start = month_start(now - timedelta(seconds=settings.BILLING_MAX_EVENT_AGE))
    stop = month_start(now, months_ahead + 1)
    created = []
    while start < stop:
        if create_month(start):
            created.append(partition_name(start))
        start = month_start(start, 1)
    return created
