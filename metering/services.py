"""Writes of the metering app: usage ingestion, customers, meters and API keys."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from metering import aggregation, event_parsing
from metering.event_parsing import EventInput, FieldError
from metering.keys import generate_key
from metering.models import ApiKey, Customer, Meter, UsageEventKey, UsageRollup

logger = logging.getLogger(__name__)

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
CONFLICT = "conflict"
_DEADLOCK_RETRIES = 3


class IngestionRejected(Exception):
    """The request is invalid as a whole (422); nothing was stored."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = list(errors)


@dataclass
class IngestionResult:
    """Per-event outcome in request order, and the counts of each status."""

    statuses: list[tuple[str, str]] = field(default_factory=list)  # (event_id, status)
    customer_ids: set[int] = field(default_factory=set)

    def count(self, status: str) -> int:
        return sum(1 for _, s in self.statuses if s == status)


@dataclass(frozen=True, slots=True)
class _Row:
    index: int
    customer_pk: int
    meter_pk: int
    event_id: str
    quantity: Decimal
    timestamp: datetime
    properties_json: str
    fingerprint: str


def record_usage_events(
    *, api_key: ApiKey, raw_events: Sequence[Any], now: datetime | None = None
) -> IngestionResult:
    """Validate and store a batch of events exactly once, all or nothing.

    Each event is `accepted` (stored now), `duplicate` (same event id and same payload already
    stored: nothing changes) or `conflict` (same event id, different payload: the stored event
    is kept). Any invalid event raises IngestionRejected and nothing is stored. The rows are
    written with one set-based INSERT ... ON CONFLICT DO NOTHING and committed before return.
    """
    now = now or timezone.now()
    max_age = timedelta(seconds=settings.BILLING_MAX_EVENT_AGE)
    max_future = timedelta(seconds=settings.BILLING_MAX_EVENT_FUTURE)

    parsed: list[EventInput] = []
    errors: list[FieldError] = []
    for index, raw in enumerate(raw_events):
        event, event_errors = event_parsing.parse_event(
            raw, index=index, now=now, max_age=max_age, max_future=max_future
        )
        if event_errors:
            errors.extend(event_errors)
        else:
            parsed.append(event)
    if errors:
        raise IngestionRejected(errors)

    rows = _resolve(api_key=api_key, events=parsed)
    for attempt in range(_DEADLOCK_RETRIES + 1):
        try:
            return _store(rows=rows, api_key=api_key, received_at=now)
        except DatabaseError as exc:
            if attempt == _DEADLOCK_RETRIES or not _is_retryable(exc):
                raise
            logger.warning("ingestion transaction retried after %s", type(exc).__name__)
    raise AssertionError("unreachable")


def _is_retryable(exc: DatabaseError) -> bool:
    sqlstate = getattr(getattr(exc, "__cause__", None), "sqlstate", None)
    return sqlstate in {"40001", "40P01"}  # serialization failure, deadlock detected


def _resolve(*, api_key: ApiKey, events: list[EventInput]) -> list[_Row]:
    """Map external ids and meter codes to rows with two queries; 422 on any unknown one."""
    external_ids = {event.customer_id for event in events}
    customers = {c.external_id: c for c in Customer.objects.filter(external_id__in=external_ids)}
    codes = {event.meter for event in events}
    meters = {m.code: m for m in Meter.objects.filter(code__in=codes, is_active=True)}

    rows: list[_Row] = []
    errors: list[FieldError] = []
    for event in events:
        customer = customers.get(event.customer_id)
        if customer is None or (
            api_key.customer_id is not None and api_key.customer_id != customer.pk
        ):
            # Out-of-scope customers read as unknown, so a scoped key learns nothing.
            errors.append(FieldError(event.index, "customer_id", "unknown customer"))
        elif customer.status == Customer.Status.ARCHIVED:
            errors.append(FieldError(event.index, "customer_id", "customer is archived"))
        meter = meters.get(event.meter)
        if meter is None:
            errors.append(FieldError(event.index, "meter", "unknown or inactive meter"))
        quantity = event.quantity
        if quantity is None:
            if meter is not None and meter.aggregation == Meter.Aggregation.COUNT:
                quantity = Decimal(1)
            elif meter is not None:
                errors.append(FieldError(event.index, "quantity", "is required for this meter"))
        if errors and errors[-1].index == event.index:
            continue
        assert customer is not None and meter is not None and quantity is not None
        rows.append(
            _Row(
                index=event.index,
                customer_pk=customer.pk,
                meter_pk=meter.pk,
                event_id=event.event_id,
                quantity=quantity,
                timestamp=event.timestamp,
                properties_json=event.properties_json,
                fingerprint=event_parsing.fingerprint(
                    customer_pk=customer.pk, meter_pk=meter.pk, quantity=quantity, event=event
                ),
            )
        )
    if errors:
        raise IngestionRejected(errors)
    return rows


def _store(*, rows: list[_Row], api_key: ApiKey, received_at: datetime) -> IngestionResult:
    # The first occurrence of a (customer, event id) in the batch is the candidate for
    # insertion; later ones are judged against it, exactly as if they came in a later request.
    first: dict[tuple[int, str], _Row] = {}
    for row in rows:
        first.setdefault((row.customer_pk, row.event_id), row)
    # Insert in key order so concurrent batches lock index entries in the same order.
    candidates = sorted(first.values(), key=lambda r: (r.customer_pk, r.event_id))

    with transaction.atomic():
        # Shared: batches never wait for each other, but a period close (exclusive) waits for
        # them and they for it, so no event commits between a close's aggregation and stamping.
        aggregation.lock_customer_usage({r.customer_pk for r in candidates}, exclusive=False)
        inserted = _insert_ignoring_conflicts(candidates, api_key=api_key, received_at=received_at)
        missing = [key for key in first if key not in inserted]
        stored = _stored_fingerprints(missing) if missing else {}

    result = IngestionResult()
    seen: set[tuple[int, str]] = set()
    for row in rows:
        key = (row.customer_pk, row.event_id)
        result.customer_ids.add(row.customer_pk)
        if key in inserted and key not in seen:
            status = ACCEPTED
        else:
            reference = first[key].fingerprint if key in inserted else stored[key]
            status = DUPLICATE if reference == row.fingerprint else CONFLICT
        seen.add(key)
        result.statuses.append((row.event_id, status))
    return result


_EVENT_COLUMNS = (
    "customer_id, meter_id, event_id, quantity, timestamp, properties, fingerprint, "
    "received_at, api_key_id"
)
# PostgreSQL: one statement claims the batch's keys in the global key table (skipping keys
# that exist: duplicates and conflicts), inserts the events whose keys it claimed into the
# partitioned events table, and adds them to their hourly rollups. Keys are claimed and rollup
# rows upserted in key order, so concurrent batches never deadlock. Arrays are passed whole:
# nine binary parameters whatever the batch size.
_PG_INSERT = f"""
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
    INSERT INTO metering_usageevent ({_EVENT_COLUMNS})
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


def _insert_ignoring_conflicts(
    rows: list[_Row], *, api_key: ApiKey, received_at: datetime
) -> set[tuple[int, str]]:
    """Insert the batch's new keys and events, and update the hourly rollups; returns the
    keys it inserted."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Binary parameters (%b): the arrays travel as PostgreSQL's binary array format,
            # not as SQL text (quoting 7,000 values cost a third of a worker's CPU). The raw
            # psycopg cursor runs inside Django's transaction on the same connection.
            connection.ensure_connection()
            # wrap_database_errors: psycopg's errors surface as Django's, as on every query
            with connection.wrap_database_errors, connection.connection.cursor() as raw:
                raw.execute(
                    _PG_INSERT,
                    [
                        [r.customer_pk for r in rows],
                        [r.meter_pk for r in rows],
                        [r.event_id for r in rows],
                        [r.quantity for r in rows],
                        [r.timestamp for r in rows],
                        [r.properties_json for r in rows],
                        [r.fingerprint for r in rows],
                        received_at,
                        api_key.pk,
                    ],
                )
                return {(customer_pk, event_id) for customer_pk, event_id in raw.fetchall()}
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
        ops = connection.ops
        params: list[Any] = []
        for r in new_rows:
            params += [
                r.customer_pk,
                r.meter_pk,
                r.event_id,
                ops.adapt_decimalfield_value(r.quantity, 19, 6),
                ops.adapt_datetimefield_value(r.timestamp),
                r.properties_json,
                r.fingerprint,
                ops.adapt_datetimefield_value(received_at),
                api_key.pk,
            ]
        placeholders = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(new_rows))
        cursor.execute(
            f"INSERT INTO metering_usageevent ({_EVENT_COLUMNS}) VALUES {placeholders} "  # noqa: S608
            "RETURNING id, customer_id, event_id",
            params,
        )
        returned = cursor.fetchall()
    by_key = {(r.customer_pk, r.event_id): r for r in new_rows}
    inserted = {(customer_pk, event_id): pk for pk, customer_pk, event_id in returned}
    add_to_rollups([(pk, by_key[key]) for key, pk in inserted.items()])
    return set(inserted)


def add_to_rollups(events: list[tuple[int, _Row]]) -> None:
    """Add inserted events to their hourly rollups in Python (the SQLite path: SQLite sums
    decimals as floats, so the arithmetic stays in Decimal here; it serializes writers)."""
    groups: dict[tuple[int, int, datetime], list[tuple[int, _Row]]] = {}
    for pk, row in events:
        hour = row.timestamp.replace(minute=0, second=0, microsecond=0)
        groups.setdefault((row.customer_pk, row.meter_pk, hour), []).append((pk, row))
    for (customer_pk, meter_pk, hour), members in sorted(groups.items()):
        latest_pk, latest = max(members, key=lambda m: (m[1].timestamp, m[0]))
        rollup = UsageRollup.objects.filter(
            customer_id=customer_pk, meter_id=meter_pk, hour=hour
        ).first()
        quantity = sum((m[1].quantity for m in members), Decimal(0))
        top = max(m[1].quantity for m in members)
        if rollup is None:
            rollup = UsageRollup(
                customer_id=customer_pk,
                meter_id=meter_pk,
                hour=hour,
                quantity=Decimal(0),
                event_count=0,
                max_quantity=top,
                latest_at=latest.timestamp,
                latest_event_pk=latest_pk,
                latest_quantity=latest.quantity,
            )
        rollup.quantity += quantity
        rollup.event_count += len(members)
        rollup.max_quantity = max(rollup.max_quantity, top)
        if (latest.timestamp, latest_pk) > (rollup.latest_at, rollup.latest_event_pk):
            rollup.latest_at = latest.timestamp
            rollup.latest_event_pk = latest_pk
            rollup.latest_quantity = latest.quantity
        rollup.save()


def _stored_fingerprints(keys: list[tuple[int, str]]) -> dict[tuple[int, str], str]:
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


# --- Customers ------------------------------------------------------------------------------


@transaction.atomic
def upsert_customer(
    *,
    external_id: str,
    name: str | None = None,
    emails: list[str] | None = None,
    currency: str | None = None,
    timezone_name: str | None = None,
) -> tuple[Customer, bool]:
    """Create a customer by external id, or update the fields given; returns (customer, created).

    The row is locked while it is updated, so two concurrent provisioning calls serialize.
    """
    customer = Customer.objects.select_for_update().filter(external_id=external_id).first()
    created = customer is None
    if customer is None:
        customer = Customer(external_id=external_id, name=name or external_id)
    if name is not None:
        customer.name = name
    if emails is not None:
        customer.emails = list(dict.fromkeys(emails))
    if currency is not None:
        customer.currency = currency
    if timezone_name is not None:
        customer.timezone = timezone_name
    customer.save()
    return customer, created


# --- API keys --------------------------------------------------------------------------------


@transaction.atomic
def issue_api_key(*, api_key: ApiKey) -> str:
    """Give an unsaved key its secret, store only the hash, and return the plaintext once."""
    new = generate_key()
    api_key.prefix = new.prefix
    api_key.key_hash = new.key_hash
    api_key.save()
    return new.plaintext


def create_api_key(
    *, name: str, customer: Customer | None = None, expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext, which is never stored or shown again."""
    api_key = ApiKey(name=name, customer=customer, expires_at=expires_at)
    return api_key, issue_api_key(api_key=api_key)


@transaction.atomic
def revoke_api_key(*, api_key: ApiKey, now: datetime | None = None) -> ApiKey:
    """Revoke a key (idempotent: the first revocation time is kept)."""
    locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if locked.revoked_at is None:
        locked.revoked_at = now or timezone.now()
        locked.save(update_fields=["revoked_at"])
    return locked
