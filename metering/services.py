"""Writes of the metering app: usage ingestion, customers, meters and API keys."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Any

from django.apps import apps as django_apps
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from billing_project.errors import DomainError
from metering import aggregation, aggregations, event_parsing, event_store, selectors
from metering.dimensions import Values, names_text, rollup_group_key, values_of
from metering.event_parsing import EventInput, FieldError
from metering.event_store import EventRow
from metering.keys import generate_key
from metering.models import ApiKey, Customer, Meter

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
        if event is None:
            errors.extend(event_errors)
        else:
            parsed.append(event)
    if errors:
        raise IngestionRejected(errors)

    rows = _resolve(api_key=api_key, events=parsed, now=now)
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


def _resolve(*, api_key: ApiKey, events: list[EventInput], now: datetime) -> list[EventRow]:
    """Map external ids and meter codes to rows with one query; 422 on any unknown one. Each
    row carries its hourly rollup's group: the values of the dimensions of its meter's rate
    card in the plan of the customer's current period (DESIGN 4a, UsageRollup)."""
    customers, meters, rate_cards = _lookup_customers_and_meters(
        external_ids={event.customer_id for event in events},
        codes={event.meter for event in events},
        now=now,
    )
    rows: list[EventRow] = []
    errors: list[FieldError] = []
    groups: dict[tuple[tuple[str, ...], Values], tuple[str, Any, str]] = {}
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
        if quantity is None and meter is not None:
            quantity = aggregations.by_code(meter[1]).default_quantity
            if quantity is None:
                errors.append(FieldError(event.index, "quantity", "is required for this meter"))
        if errors and errors[-1].index == event.index:
            continue
        assert customer is not None and meter is not None and quantity is not None
        names = rate_cards.get((event.customer_id, meter[0]), ())
        values = values_of(event.properties, names) if names else ()
        group = groups.get((names, values))
        if group is None:  # a batch has few groups: each one's text and key computed once
            padded: Any = (*values, None, None, None)[:3]
            group = groups[(names, values)] = (
                names_text(names),
                padded,
                rollup_group_key(names, values),
            )
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
                dimension_names=group[0],
                dimension_values=group[1],
                group_key=group[2],
            )
        )
    if errors:
        raise IngestionRejected(errors)
    return rows


def _lookup_customers_and_meters(
    *, external_ids: set[str], codes: set[str], now: datetime
) -> tuple[
    dict[str, tuple[int, str]], dict[str, tuple[int, str]], dict[tuple[str, int], tuple[str, ...]]
]:
    """({external id: (pk, status)}, {active meter code: (pk, aggregation)}, {(external id,
    meter pk): dimension names}) in one round trip and without model instances: this runs on
    every ingestion request. The third: the rate cards of the plan of each customer's period
    that holds `now` (no current period: none), which the hourly rollups group by."""
    customer_marks = ", ".join(["%s"] * len(external_ids))
    meter_marks = ", ".join(["%s"] * len(codes))
    customer_table, meter_table = Customer._meta.db_table, Meter._meta.db_table
    sql = (
        f"SELECT 0, external_id, id, status FROM {customer_table} "  # noqa: S608 - placeholders only
        f"WHERE external_id IN ({customer_marks}) "
        f"UNION ALL SELECT 1, code, id, aggregation FROM {meter_table} "
        f"WHERE is_active AND code IN ({meter_marks})"
    )
    params: list[Any] = [*external_ids, *codes]
    rate_card_sql = _rate_cards_sql()
    if rate_card_sql:
        sql += rate_card_sql.format(customers=customer_marks)
        at = connection.ops.adapt_datetimefield_value(now)
        params += [at, at, *external_ids]
    found: tuple[dict[str, tuple[int, str]], dict[str, tuple[int, str]]] = ({}, {})
    rate_cards: dict[tuple[str, int], tuple[str, ...]] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for kind, name, pk, detail in cursor.fetchall():
            if kind == 2:
                rate_cards[(name, pk)] = tuple(json.loads(detail))
            else:
                found[kind][name] = (pk, detail)
    return found[0], found[1], rate_cards


@functools.cache
def _rate_cards_sql() -> str:
    """The UNION ALL part of the lookup giving (2, external id, meter pk, dimensions as JSON
    text) for the rate cards of the customers' current periods' plans. The billing app owns
    those tables (metering must not import it): their names come from the app registry, and
    without that app there are no rate cards."""
    try:
        period = django_apps.get_model("invoicing", "BillingPeriod")
        price = django_apps.get_model("invoicing", "Price")
    except LookupError:
        return ""
    q = connection.ops.quote_name
    return (
        f" UNION ALL SELECT 2, c.external_id, p.meter_id, CAST(p.dimensions AS TEXT) "  # noqa: S608 - table names only
        f"FROM {Customer._meta.db_table} c "
        f"JOIN {period._meta.db_table} bp ON bp.customer_id = c.id "
        f"AND bp.{q('start')} <= %s AND bp.{q('end')} > %s "
        f"JOIN {price._meta.db_table} p ON p.plan_id = bp.plan_id "
        "WHERE c.external_id IN ({customers}) AND CAST(p.dimensions AS TEXT) <> '[]'"
    )


def _store(*, rows: list[EventRow], api_key: ApiKey, received_at: datetime) -> IngestionResult:
    first, candidates = event_store.candidates(rows)
    with transaction.atomic():
        # Shared: batches never wait for each other, but a period close (exclusive) waits for
        # them and they for it, so no event commits between a close's aggregation and stamping.
        aggregation.lock_customer_usage({r.customer_pk for r in candidates}, exclusive=False)
        inserted = event_store.insert_events(
            candidates, received_at=received_at, api_key_pk=api_key.pk
        )
        missing = [key for key in first if key not in inserted]
        stored = event_store.stored_fingerprints(missing) if missing else {}
    return IngestionResult(
        statuses=event_store.statuses(rows, first=first, inserted=inserted, stored=stored),
        customer_ids={row.customer_pk for row in rows},
    )


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


# --- Meters --------------------------------------------------------------------------------

# What a meter's recorded usage means: fixed once it has events, or past usage (and the
# invoices that billed it) would change meaning. The database refuses the same changes
# (trigger, migration metering 0012).
METER_MEANING_FIELDS = ("code", "aggregation", "unique_property")


class MeterInUse(DomainError):
    """The meter has usage: its code, aggregation and unique property cannot change (409)."""

    status = HTTPStatus.CONFLICT
    code = "meter_in_use"


@transaction.atomic
def save_meter(*, meter: Meter) -> Meter:
    """Create a meter, or store the changes made to one (finance staff, in the admin).

    A meter with usage keeps what its usage means (METER_MEANING_FIELDS): changing any of them
    raises MeterInUse and saves nothing; its name, unit, description and activity may change.
    The stored row is locked first (FOR UPDATE, which an event's foreign key waits for when
    it commits), so the check and the change see the same usage.
    """
    if meter.pk is not None:
        stored = Meter.objects.select_for_update().get(pk=meter.pk)
        changed = [f for f in METER_MEANING_FIELDS if getattr(stored, f) != getattr(meter, f)]
        if changed and selectors.meter_has_usage(meter=stored):
            raise MeterInUse(
                f"meter {stored.code} has usage: its {', '.join(changed)} cannot change "
                "(create a new meter for the new meaning)"
            )
    meter.save()
    return meter


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
