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

from billing_project.db import server_binding_cursor
from billing_project.errors import DomainError
from metering import aggregation, event_parsing, event_store
from metering.event_parsing import EventInput, FieldError
from metering.event_store import EventRow
from metering.keys import generate_key
from metering.models import ApiKey, Customer, Meter, UsageEventKey, UsageRollup

logger = logging.getLogger(__name__)

ACCEPTED = event_store.ACCEPTED
DUPLICATE = event_store.DUPLICATE
CONFLICT = event_store.CONFLICT
_DEADLOCK_RETRIES = 3


class IngestionRejected(DomainError):
    """The request is invalid as a whole (422), each problem named by its event's index and
    field; nothing was stored."""

    code = "invalid_events"

    def __init__(self, errors: Sequence[FieldError]) -> None:
        super().__init__(f"{len(errors)} invalid field(s)", details=errors)
        self.errors = list(errors)


@dataclass
class IngestionResult:
    """Per-event outcome in request order, and the counts of each status."""

    statuses: list[tuple[str, str]] = field(default_factory=list)  # (event_id, status)
    customer_ids: set[int] = field(default_factory=set)

    def count(self, status: str) -> int:
        return sum(1 for _, s in self.statuses if s == status)


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


def _resolve(*, api_key: ApiKey, events: list[EventInput]) -> list[EventRow]:
    """Map external ids and meter codes to rows with one query; 422 on any unknown one."""
    customers, meters = _lookup_customers_and_meters(
        external_ids={event.customer_id for event in events},
        codes={event.meter for event in events},
    )
    rows: list[EventRow] = []
    errors: list[FieldError] = []
    archived = Customer.Status.ARCHIVED
    for event in events:
        customer = customers.get(event.customer_id)  # (pk, status)
        if customer is None or (
            api_key.customer_id is not None and api_key.customer_id != customer[0]
        ):
            # Out-of-scope customers read as unknown, so a scoped key learns nothing.
            errors.append(FieldError(event.index, "customer_id", "unknown customer"))
        elif customer[1] == archived:
            errors.append(FieldError(event.index, "customer_id", "customer is archived"))
        meter = meters.get(event.meter)  # (pk, aggregation)
        if meter is None:
            errors.append(FieldError(event.index, "meter", "unknown or inactive meter"))
        quantity = event.quantity
        if quantity is None:
            if meter is not None and meter[1] == Meter.Aggregation.COUNT:
                quantity = Decimal(1)
            elif meter is not None:
                errors.append(FieldError(event.index, "quantity", "is required for this meter"))
        if errors and errors[-1].index == event.index:
            continue
        assert customer is not None and meter is not None and quantity is not None
        rows.append(
            EventRow(
                index=event.index,
                customer_pk=customer[0],
                meter_pk=meter[0],
                event_id=event.event_id,
                quantity=quantity,
                timestamp=event.timestamp,
                properties_json=event.properties_json,
                fingerprint=event_parsing.fingerprint(
                    customer_pk=customer[0], meter_pk=meter[0], quantity=quantity, event=event
                ),
            )
        )
    if errors:
        raise IngestionRejected(errors)
    return rows


def _lookup_customers_and_meters(
    *, external_ids: set[str], codes: set[str]
) -> tuple[dict[str, tuple[int, str]], dict[str, tuple[int, str]]]:
    """({external id: (pk, status)}, {active meter code: (pk, aggregation)}) in one round trip
    and without model instances: this runs on every ingestion request."""
    customer_marks = ", ".join(["%s"] * len(external_ids))
    meter_marks = ", ".join(["%s"] * len(codes))
    customer_table, meter_table = Customer._meta.db_table, Meter._meta.db_table
    sql = (
        f"SELECT 0, external_id, id, status FROM {customer_table} "  # noqa: S608 - placeholders only
        f"WHERE external_id IN ({customer_marks}) "
        f"UNION ALL SELECT 1, code, id, aggregation FROM {meter_table} "
        f"WHERE is_active AND code IN ({meter_marks})"
    )
    found: tuple[dict[str, tuple[int, str]], dict[str, tuple[int, str]]] = ({}, {})
    with connection.cursor() as cursor:
        cursor.execute(sql, [*external_ids, *codes])
        for kind, name, pk, detail in cursor.fetchall():
            found[kind][name] = (pk, detail)
    return found


def _store(*, rows: list[EventRow], api_key: ApiKey, received_at: datetime) -> IngestionResult:
    first, candidates = event_store.candidates(rows)
    with transaction.atomic():
        # Shared: batches never wait for each other, but a period close (exclusive) waits for
        # them and they for it, so no event commits between a close's aggregation and stamping.
        aggregation.lock_customer_usage({r.customer_pk for r in candidates}, exclusive=False)
        inserted = _insert_ignoring_conflicts(candidates, api_key=api_key, received_at=received_at)
        missing = [key for key in first if key not in inserted]
        stored = _stored_fingerprints(missing) if missing else {}
    return IngestionResult(
        statuses=event_store.statuses(rows, first=first, inserted=inserted, stored=stored),
        customer_ids={row.customer_pk for row in rows},
    )


def _insert_ignoring_conflicts(
    rows: list[EventRow], *, api_key: ApiKey, received_at: datetime
) -> set[tuple[int, str]]:
    """Insert the batch's new keys and events, and update the hourly rollups; returns the
    keys it inserted."""
    if connection.vendor == "postgresql":
        with server_binding_cursor() as raw:
            # Prepared once per connection: planning this statement cost 2-5 ms per batch.
            raw.execute(
                event_store.INSERT_EVENTS,
                event_store.insert_params(rows, received_at=received_at, api_key_pk=api_key.pk),
                prepare=True,
            )
            return {(customer_pk, event_id) for customer_pk, event_id in raw.fetchall()}
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
            f"INSERT INTO metering_usageevent ({event_store.EVENT_COLUMNS}) "  # noqa: S608
            f"VALUES {placeholders} RETURNING id, customer_id, event_id",
            params,
        )
        returned = cursor.fetchall()
    by_key = {(r.customer_pk, r.event_id): r for r in new_rows}
    inserted = {(customer_pk, event_id): pk for pk, customer_pk, event_id in returned}
    add_to_rollups([(pk, by_key[key]) for key, pk in inserted.items()])
    return set(inserted)


def add_to_rollups(events: list[tuple[int, EventRow]]) -> None:
    """Add inserted events to their hourly rollups in Python (the SQLite path: SQLite sums
    decimals as floats, so the arithmetic stays in Decimal here; it serializes writers)."""
    groups: dict[tuple[int, int, datetime], list[tuple[int, EventRow]]] = {}
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
    """The fingerprints stored for keys, read after the insert (in a statement of its own, so
    it sees keys that concurrent batches committed meanwhile)."""
    if connection.vendor == "postgresql":
        with server_binding_cursor() as raw:
            raw.execute(
                event_store.STORED_FINGERPRINTS, event_store.fingerprint_params(keys), prepare=True
            )
            return {(customer_pk, event_id): fp for customer_pk, event_id, fp in raw.fetchall()}
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
