"""The outbox: the one state machine every Stripe write follows, so it is made exactly once.

1. In a transaction, record the intent (the outbox row, attempts + 1) and commit (`begin`).
2. Outside any transaction, call Stripe with an idempotency key derived from our ids.
3. In a new transaction, record the answer (Stripe ids on our rows, statuses, audit entries).
   `attempt` runs steps 2 and 3 and records what went wrong.

A crash between 2 and 3 is repaired by the next run: the same key makes Stripe replay its first
answer (keys live at least 24 hours), and lookups find what an earlier run created even later
(the customer's invoices by our invoice id in metadata, the invoice's items by our line id).

Stripe saves the first answer under a key once the endpoint started executing, errors too: a
500 retried under the same key stays a 500 for a day. So every key carries the row's attempt
counter (`key_attempt`), bumped when Stripe answered with a saved error (`saved` on the
TransientStripeError) and when finance staff retry a row: the next run looks the object up
first (as after a lost answer) and, only if it is not there, writes under the new key. A lost
answer (connection error, timeout) keeps the key: Stripe replays what it did, or runs it now.
Keys also carry the parameters' fingerprint (client.idempotency_key), so a key is never sent
with other parameters (a customer re-linked meanwhile, say).
Transient errors propagate as TransientStripeError for the Celery task to retry with backoff
(`retry_delay`); permanent ones are recorded (status `failed`). A row still unresolved
RESEND_WINDOW after its first attempt is flagged `needs_attention` and is not resent until
finance staff retry it (`reopen`). A pending row untouched for STALE_ATTEMPT is queued again by
the resume beat (`stale`).

Two kinds of row follow it, each described by an `Outbox`: the delivery of an invoice
(StripeInvoiceSync, invoicing.stripe.invoices) and a usage report (UsageReport,
invoicing.stripe.usage_reports). Both have the statuses pending, failed and needs_attention;
they differ in the name of the status that means done (delivered, sent).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, models, transaction
from django.db.models import F, Q
from django.utils import timezone

from invoicing.stripe import client

# Stripe keeps idempotency keys and meter-event identifiers at least this long: within it a
# retry is always safe; after it, only a person decides to resend.
RESEND_WINDOW = timedelta(hours=24)
# A pending row untouched this long is assumed abandoned (worker lost) and queued again.
STALE_ATTEMPT = timedelta(minutes=10)

PENDING = "pending"
FAILED = "failed"
NEEDS_ATTENTION = "needs_attention"


@dataclass(frozen=True)
class Outbox:
    """One kind of outbox row and what is particular to it.

    `unresolved(row)` is the row's last_error once it is flagged; `on_flagged(row)` and
    `on_failed(row, error)` run in the transaction that flags or fails it (an audit entry).
    """

    model: type[models.Model]
    done: str
    unresolved: Callable[[Any], str]
    on_flagged: Callable[[Any], None] = field(default=lambda row: None)
    on_failed: Callable[[Any, client.StripeSyncError], None] = field(
        default=lambda row, error: None
    )

    def has(self, name: str) -> bool:
        """Whether the model has this field (`key_attempt` is optional: an outbox without it
        keeps one key per write)."""
        return any(f.name == name for f in self.model._meta.get_fields())

    def fields(self, *names: str) -> list[str]:
        """`names`, plus updated_at where the model keeps one (for `save(update_fields=)`)."""
        has_updated_at = any(f.name == "updated_at" for f in self.model._meta.get_fields())
        return [*names, "updated_at"] if has_updated_at else list(names)


def get_or_create_locked(model: type[models.Model], **lookup: Any) -> Any:
    """The row for `lookup`, created if missing, locked for the rest of the transaction."""
    try:
        with transaction.atomic():
            model._default_manager.get_or_create(**lookup)
    except IntegrityError:
        pass  # created concurrently: the lock below waits for it
    return model._default_manager.select_for_update().get(**lookup)


def past_resend_window(first_attempt_at: datetime | None, now: datetime) -> bool:
    """Whether Stripe may have forgotten the keys of a write first tried at `first_attempt_at`."""
    return first_attempt_at is not None and now - first_attempt_at > RESEND_WINDOW


def begin(outbox: Outbox, row: Any, *, now: datetime) -> bool:
    """Step 1, on a row locked in the caller's transaction: count one more attempt and return
    True (call Stripe once this commits), or False when the row is not pending, or has just
    been flagged `needs_attention` because its resend window has passed."""
    if row.status != PENDING:
        return False
    if past_resend_window(row.first_attempt_at, now):
        row.status = NEEDS_ATTENTION
        row.last_error = outbox.unresolved(row)
        row.save(update_fields=outbox.fields("status", "last_error"))
        outbox.on_flagged(row)
        return False
    row.attempts += 1
    row.first_attempt_at = row.first_attempt_at or now
    row.last_attempt_at = now
    row.save(
        update_fields=outbox.fields(
            "status", "last_error", "attempts", "first_attempt_at", "last_attempt_at"
        )
    )
    return True


def attempt(outbox: Outbox, *, row_id: int, send: Callable[[], None]) -> str:
    """Steps 2 and 3: `send()` calls Stripe and records the answer. A transient error is noted
    on the row and raised again (the task retries); a permanent one fails the row. Returns the
    row's status: done, failed, or what `send` recorded."""
    try:
        send()
    except client.TransientStripeError as exc:
        _note_error(outbox, row_id=row_id, error=str(exc), new_key=exc.saved)
        raise
    except client.PermanentStripeError as exc:
        _fail(outbox, row_id=row_id, error=exc)
        return FAILED
    # Done, or a state of its own that `send` recorded (a delivery awaiting a payment method).
    return outbox.model._default_manager.values_list("status", flat=True).get(pk=row_id)


@transaction.atomic
def _note_error(outbox: Outbox, *, row_id: int, error: str, new_key: bool = False) -> None:
    changes: dict[str, Any] = {"last_error": error}
    if new_key and outbox.has("key_attempt"):
        changes["key_attempt"] = F("key_attempt") + 1
    if "updated_at" in outbox.fields():
        changes["updated_at"] = timezone.now()
    outbox.model._default_manager.filter(pk=row_id).update(**changes)


@transaction.atomic
def _fail(outbox: Outbox, *, row_id: int, error: client.StripeSyncError) -> None:
    row: Any = outbox.model._default_manager.select_for_update().get(pk=row_id)  # any outbox model
    row.status = FAILED
    row.last_error = str(error)
    row.save(update_fields=outbox.fields("status", "last_error"))
    outbox.on_failed(row, error)


def reopen(outbox: Outbox, row: Any, *, now: datetime) -> str | None:
    """Finance staff retry a locked row (failed, flagged, or pending): pending again, with the
    resend window restarted, since a person checked Stripe and decided. Returns the status it
    had, or None when it is done already (nothing to retry)."""
    if row.status == outbox.done:
        return None
    before = row.status
    row.status = PENDING
    row.first_attempt_at = now if row.first_attempt_at else None
    # Stripe may hold a refusal under the old keys: the rerun looks up, then uses new ones.
    changed = ["status", "first_attempt_at"]
    if outbox.has("key_attempt"):
        row.key_attempt += 1
        changed.append("key_attempt")
    row.save(update_fields=outbox.fields(*changed))
    return before


def bump_key(model: type[models.Model], *, row_id: int) -> None:
    """Move a row to new idempotency keys (Stripe saved an error under the current ones)."""
    with transaction.atomic():
        model._default_manager.filter(pk=row_id).update(key_attempt=F("key_attempt") + 1)


def stale(outbox: Outbox, *, now: datetime) -> models.QuerySet:
    """The pending rows a lost worker or a lost task left: last attempted, or (never attempted)
    created, more than STALE_ATTEMPT ago. Past the resend window, `begin` flags them."""
    before = now - STALE_ATTEMPT
    return outbox.model._default_manager.filter(
        Q(last_attempt_at__lt=before) | Q(last_attempt_at__isnull=True, created_at__lt=before),
        status=PENDING,
    ).order_by("pk")


def retry_delay(exc: BaseException, *, retries: int) -> int:
    """Seconds before the next attempt: exponential backoff, at least Stripe's Retry-After."""
    backoff = min(600, 5 * 2 ** min(retries, 10))
    retry_after = getattr(exc, "retry_after", None) or 0
    return max(backoff, int(retry_after))
