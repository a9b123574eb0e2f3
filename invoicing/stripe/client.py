"""The Stripe client: the one module of the project that imports the `stripe` library.

Each function here is one Stripe API call (or one verification) with plain-dict answers, so
the modules beside it (customers, invoices, usage_reports, webhooks, reconcile) hold every
decision and never see the library. Rules kept here for every call:

- No call runs inside a database transaction (checked: RuntimeError otherwise). Callers record
  their intent and commit first, then call, then record the outcome in a new transaction
  (invoicing.stripe.outbox).
- Every write carries the idempotency key the caller derives from our ids (`idempotency_key`).
- The client never retries by itself (`max_network_retries=0`): the Celery task is the retrier.
  Errors come out as TransientStripeError (connection errors, timeouts, 409, 429, 5xx: retry
  later with the same key) or PermanentStripeError (anything else: record it, do not retry).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import stripe
from django.conf import settings
from django.db import connection

from billing_project.errors import BadRequest

# Stripe answers a repeated meter-event identifier with a 400 starting with this message.
DUPLICATE_METER_EVENT = "An event already exists with identifier"


class StripeSyncError(Exception):
    """A Stripe call did not succeed."""

    def __init__(self, message: str, *, code: str = "", http_status: int | None = None):
        super().__init__(message)
        self.code = code or ""
        self.http_status = http_status


class TransientStripeError(StripeSyncError, ConnectionError):
    """Worth retrying later with the same idempotency key (a ConnectionError, so the delivery
    task's autoretry covers it). `retry_after` is Stripe's Retry-After, in seconds, if any."""

    def __init__(self, message: str, *, retry_after: int | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class PermanentStripeError(StripeSyncError):
    """Stripe refused the request; repeating it unchanged would be refused again."""


class CardDeclined(PermanentStripeError):
    """A payment attempt failed (402): the invoice stays open in Stripe, which keeps trying."""


class InvalidWebhook(BadRequest):
    """The webhook's signature is missing, wrong or stale, or its body is not an event we
    understand (400, nothing stored)."""

    code = "invalid_webhook"

    def __init__(self, detail: str) -> None:
        super().__init__(f"invalid webhook: {detail}")


@dataclass(frozen=True)
class MeterEventResult:
    identifier: str
    duplicate: bool  # Stripe already had this identifier: delivered before


# --- The client -----------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _client_for(api_key: str, api_base: str, timeout: float) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


def _client() -> stripe.StripeClient:
    if not settings.STRIPE_API_KEY:
        raise PermanentStripeError("STRIPE_API_KEY is not set", code="not_configured")
    return _client_for(settings.STRIPE_API_KEY, settings.STRIPE_API_BASE, settings.STRIPE_TIMEOUT)


def idempotency_key(suffix: str) -> str:
    """Our deterministic key for one write, namespaced per installation."""
    return f"{settings.STRIPE_KEY_PREFIX}-{suffix}"


def _outside_transaction() -> None:
    if connection.in_atomic_block:
        raise RuntimeError("Stripe must not be called inside a database transaction")


def _translate(exc: stripe.StripeError) -> StripeSyncError:
    status = exc.http_status
    code = exc.code or ""
    message = f"{type(exc).__name__}: {exc.user_message or exc}"
    if isinstance(exc, stripe.APIConnectionError):
        return TransientStripeError(message, code="connection", http_status=status)
    if isinstance(exc, stripe.RateLimitError):
        raw = (exc.headers or {}).get("Retry-After") or (exc.headers or {}).get("retry-after")
        retry_after = int(raw) if raw and str(raw).isdigit() else None
        return TransientStripeError(
            message, retry_after=retry_after, code=code or "rate_limit", http_status=status
        )
    if isinstance(exc, stripe.CardError):
        return CardDeclined(message, code=code, http_status=status)
    if isinstance(exc, stripe.IdempotencyError):
        return PermanentStripeError(message, code="idempotency_error", http_status=status)
    if status is None or status >= 500 or status == 409:
        return TransientStripeError(message, code=code, http_status=status)
    return PermanentStripeError(message, code=code, http_status=status)


def _call(method: Any, *args: Any, **kwargs: Any) -> Any:
    _outside_transaction()
    try:
        return method(*args, **kwargs)
    except stripe.StripeError as exc:
        raise _translate(exc) from exc


def _plain(obj: Any) -> dict[str, Any]:
    return obj.to_dict(recursive=True, for_json=True)


def _write(method: Any, params: dict[str, Any], key: str, *args: Any) -> dict[str, Any]:
    return _plain(_call(method, *args, params=params, options={"idempotency_key": key}))


def _all(page: Any) -> Iterator[dict[str, Any]]:
    try:
        for obj in page.auto_paging_iter():
            yield _plain(obj)
    except stripe.StripeError as exc:
        raise _translate(exc) from exc


def epoch(moment: datetime) -> int:
    """Seconds since 1970 (Stripe's time), whole."""
    return int(moment.timestamp())


def from_epoch(seconds: int) -> datetime:
    """The aware UTC datetime of Stripe's whole seconds."""
    return datetime.fromtimestamp(int(seconds), tz=UTC)


# --- Customers --------------------------------------------------------------------------------


def create_customer(*, params: dict[str, Any], key: str) -> dict[str, Any]:
    return _write(_client().v1.customers.create, params, key)


def find_customer(*, customer_id: int) -> dict[str, Any] | None:
    """The Stripe customer whose metadata carries our customer id (search is eventually
    consistent: only asked long after the creation request)."""
    query = f"metadata['customer_id']:'{int(customer_id)}'"
    page = _call(_client().v1.customers.search, params={"query": query, "limit": 10})
    found = [_plain(c) for c in page.data]
    return found[0] if found else None


# --- Invoices ---------------------------------------------------------------------------------


def create_invoice(*, params: dict[str, Any], key: str) -> dict[str, Any]:
    return _write(_client().v1.invoices.create, params, key)


def find_invoice(*, stripe_customer_id: str, invoice_id: int) -> dict[str, Any] | None:
    """The customer's Stripe invoice whose metadata names our invoice (lists are consistent,
    so a re-run long after a lost answer still finds what the first run created)."""
    page = _call(_client().v1.invoices.list, params={"customer": stripe_customer_id, "limit": 100})
    for invoice in _all(page):
        if (invoice.get("metadata") or {}).get("invoice_id") == str(invoice_id):
            return invoice
    return None


def retrieve_invoice(stripe_invoice_id: str) -> dict[str, Any]:
    return _plain(_call(_client().v1.invoices.retrieve, stripe_invoice_id))


def list_invoices() -> Iterator[dict[str, Any]]:
    return _all(_call(_client().v1.invoices.list, params={"limit": 100}))


def finalize_invoice(
    stripe_invoice_id: str, *, key: str, auto_advance: bool = True
) -> dict[str, Any]:
    # auto_advance: from now on Stripe runs collection (payment retries, reminders) itself.
    # Without it, the invoice stays open and quiet (finalized only to be voided or settled).
    return _write(
        _client().v1.invoices.finalize_invoice,
        {"auto_advance": auto_advance},
        key,
        stripe_invoice_id,
    )


def pay_invoice(stripe_invoice_id: str, *, key: str, out_of_band: bool = False) -> dict[str, Any]:
    """Charge the invoice, or (out_of_band) record that it was paid outside Stripe."""
    params = {"paid_out_of_band": True} if out_of_band else {}
    return _write(_client().v1.invoices.pay, params, key, stripe_invoice_id)


def void_invoice(stripe_invoice_id: str, *, key: str) -> dict[str, Any]:
    return _write(_client().v1.invoices.void_invoice, {}, key, stripe_invoice_id)


def mark_uncollectible(stripe_invoice_id: str, *, key: str) -> dict[str, Any]:
    return _write(_client().v1.invoices.mark_uncollectible, {}, key, stripe_invoice_id)


def send_invoice(stripe_invoice_id: str, *, key: str) -> dict[str, Any]:
    return _write(_client().v1.invoices.send_invoice, {}, key, stripe_invoice_id)


# --- Invoice items ----------------------------------------------------------------------------


def create_invoice_item(*, params: dict[str, Any], key: str) -> dict[str, Any]:
    return _write(_client().v1.invoice_items.create, params, key)


def list_invoice_items(*, stripe_invoice_id: str | None = None) -> Iterator[dict[str, Any]]:
    params: dict[str, Any] = {"limit": 100}
    if stripe_invoice_id:
        params["invoice"] = stripe_invoice_id
    return _all(_call(_client().v1.invoice_items.list, params=params))


# --- Billing meters ---------------------------------------------------------------------------


def create_meter_event(
    *,
    event_name: str,
    stripe_customer_id: str,
    value: int,
    identifier: str,
    timestamp: datetime,
) -> MeterEventResult:
    """Send one meter event; a repeated identifier means it was delivered before."""
    params = {
        "event_name": event_name,
        "identifier": identifier,
        "timestamp": epoch(timestamp),
        "payload": {"stripe_customer_id": stripe_customer_id, "value": str(value)},
    }
    try:
        _write(_client().v1.billing.meter_events.create, params, identifier)
    except PermanentStripeError as exc:
        if exc.http_status == 400 and str(exc).find(DUPLICATE_METER_EVENT) != -1:
            return MeterEventResult(identifier=identifier, duplicate=True)
        raise
    return MeterEventResult(identifier=identifier, duplicate=False)


def meter_ids_by_event_name() -> dict[str, str]:
    page = _call(_client().v1.billing.meters.list, params={"limit": 100})
    return {meter["event_name"]: meter["id"] for meter in _all(page)}


def meter_usage(
    *, stripe_meter_id: str, stripe_customer_id: str, start: datetime, end: datetime
) -> Decimal:
    """Stripe's aggregated value of a customer's meter events in [start, end) (minute-aligned)."""
    page = _call(
        _client().v1.billing.meters.event_summaries.list,
        stripe_meter_id,
        params={
            "customer": stripe_customer_id,
            "start_time": epoch(start),
            "end_time": epoch(end),
            "limit": 100,
        },
    )
    return sum((Decimal(str(s["aggregated_value"])) for s in _all(page)), Decimal(0))


# --- Webhooks ---------------------------------------------------------------------------------


def verify_webhook(*, payload: bytes, signature: str | None) -> None:
    """Check a webhook's signature and timestamp (InvalidWebhook if they do not hold); what the
    body says is the caller's to read (invoicing.stripe.webhooks)."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        raise InvalidWebhook("STRIPE_WEBHOOK_SECRET is not set")
    if signature and not signature.isascii():  # the library's comparison would raise TypeError
        raise InvalidWebhook("the Stripe-Signature header is not ASCII")
    try:
        stripe.WebhookSignature.verify_header(
            payload, signature, secret, tolerance=settings.STRIPE_WEBHOOK_TOLERANCE
        )
    except (stripe.SignatureVerificationError, ValueError) as exc:  # ValueError: not UTF-8
        raise InvalidWebhook(str(exc)) from exc


def dashboard_url(kind: str, stripe_id: str) -> str:
    """A link to an object in the Stripe dashboard (`kind`: invoices, customers, ...)."""
    test = settings.STRIPE_API_KEY.startswith(("sk_test_", "rk_test_"))
    return f"https://dashboard.stripe.com/{'test/' if test else ''}{kind}/{stripe_id}"
