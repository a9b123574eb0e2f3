"""The Stripe client: the one module of the project that imports the `stripe` library.

Each function here is one Stripe API call (or one verification) with plain-dict answers, so
the modules beside it (customers, invoices, usage_reports, webhooks, reconcile) hold every
decision and never see the library. Rules kept here for every call:

- No call runs inside a database transaction (checked: RuntimeError otherwise). Callers record
  their intent and commit first, then call, then record the outcome in a new transaction
  (invoicing.stripe.outbox).
- Every write carries the idempotency key the caller derives from our ids, the attempt
  counter of its outbox row and a fingerprint of the parameters (`idempotency_key`), so a key
  is never sent again with other parameters (Stripe would answer 400 idempotency_error).
- The client never retries by itself (`max_network_retries=0`): the Celery task is the retrier.
  Errors come out as TransientStripeError (connection errors, timeouts, 409, 429, 5xx, and a
  key refused as used with other parameters: retry later; `saved` says whether Stripe kept
  the answer under the key, so the retry needs a new one) or PermanentStripeError (anything
  else: record it, do not retry).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import stripe
from django.conf import settings
from django.db import connection

from billing_project.errors import BadRequest

# Stripe's limits on what we derive from our ids (OpenAPI maxLength of a meter event's
# identifier; the idempotency layer's key length).
IDENTIFIER_MAX = 100
IDEMPOTENCY_KEY_MAX = 255
# The longest suffix we append to STRIPE_KEY_PREFIX in an identifier: "-usage-" and a 64-bit
# primary key (invoicing.stripe.usage_reports.report_identifier).
IDENTIFIER_SUFFIX_MAX = len("-usage-") + len(str(2**63 - 1))
KEY_PREFIX_MAX = IDENTIFIER_MAX - IDENTIFIER_SUFFIX_MAX


class StripeSyncError(Exception):
    """A Stripe call did not succeed."""

    def __init__(self, message: str, *, code: str = "", http_status: int | None = None):
        super().__init__(message)
        self.code = code or ""
        self.http_status = http_status


class TransientStripeError(StripeSyncError, ConnectionError):
    """Worth retrying later (a ConnectionError, so the delivery task's autoretry covers it).
    `retry_after` is Stripe's Retry-After, in seconds, if any.

    `saved`: Stripe answered, and keeps that answer under the key (a 5xx once the endpoint ran,
    for 24 hours): the same key would replay it, so the retry looks the object up and goes
    under a new key. Not saved: the answer was lost (connection error, timeout: the same key
    replays whatever Stripe did), or refused before any execution (429, 409 key in flight)."""

    def __init__(
        self, message: str, *, retry_after: int | None = None, saved: bool = False, **kwargs: Any
    ):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
        self.saved = saved


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


# --- The client -----------------------------------------------------------------------------


# The Stripe API version every request names (Stripe-Version), set here and nowhere else: the
# version the pinned library (pyproject: stripe>=16.1,<17) is generated for. Objects and
# webhook events come in this version's shapes. Changing it is an upgrade of its own.
API_VERSION = "2026-10-28.endive"


@lru_cache(maxsize=4)
def _client_for(api_key: str, api_base: str, timeout: float) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        stripe_version=API_VERSION,
        base_addresses={"api": api_base},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


def _client() -> stripe.StripeClient:
    if not settings.STRIPE_API_KEY:
        raise PermanentStripeError("STRIPE_API_KEY is not set", code="not_configured")
    return _client_for(settings.STRIPE_API_KEY, settings.STRIPE_API_BASE, settings.STRIPE_TIMEOUT)


def identifier(suffix: str) -> str:
    """An identifier derived from our ids, namespaced per installation (meter events)."""
    return f"{settings.STRIPE_KEY_PREFIX}-{suffix}"


def fingerprint(params: dict[str, Any]) -> str:
    """A short digest of a request's parameters (canonical JSON)."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def idempotency_key(suffix: str, *, attempt: int = 0, params: dict[str, Any] | None = None) -> str:
    """Our deterministic key for one write: the installation's prefix, our ids (`suffix`), the
    outbox row's attempt counter (after Stripe saved an error under the previous key) and the
    parameters' fingerprint (so a key is never reused with other parameters)."""
    key = identifier(suffix)
    if attempt:
        key = f"{key}-a{attempt}"
    if params is not None:
        key = f"{key}-{fingerprint(params)}"
    return key


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
    if status == 409:  # a request with the same key still in flight (or a lock): later
        return TransientStripeError(message, code=code or "conflict", http_status=status)
    if isinstance(exc, stripe.IdempotencyError):  # the key was used with other parameters
        return TransientStripeError(
            message, code="idempotency_error", http_status=status, saved=True
        )
    if status is None:
        return TransientStripeError(message, code=code, http_status=status)
    if status >= 500:
        return TransientStripeError(message, code=code, http_status=status, saved=True)
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


def retrieve_customer(stripe_customer_id: str) -> dict[str, Any]:
    return _plain(_call(_client().v1.customers.retrieve, stripe_customer_id))


def set_default_payment_method(
    stripe_customer_id: str, *, payment_method_id: str, key: str
) -> dict[str, Any]:
    """Make a payment method (attached to the customer) the one its invoices are charged to."""
    return _write(
        _client().v1.customers.update,
        default_payment_method_params(payment_method_id),
        key,
        stripe_customer_id,
    )


def default_payment_method_params(payment_method_id: str) -> dict[str, Any]:
    return {"invoice_settings": {"default_payment_method": payment_method_id}}


def has_payment_method(stripe_customer: dict[str, Any]) -> bool:
    """Whether Stripe can charge the customer's invoices: a default payment method for
    invoices, or a default source."""
    settings_ = stripe_customer.get("invoice_settings") or {}
    return bool(settings_.get("default_payment_method") or stripe_customer.get("default_source"))


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


# The parameters of the two kinds of /pay (their keys carry these parameters' fingerprint).
PAY: dict[str, Any] = {}
PAY_OUT_OF_BAND: dict[str, Any] = {"paid_out_of_band": True}


def pay_invoice(stripe_invoice_id: str, *, key: str, out_of_band: bool = False) -> dict[str, Any]:
    """Charge the invoice, or (out_of_band) record that it was paid outside Stripe."""
    params = dict(PAY_OUT_OF_BAND if out_of_band else PAY)
    return _write(_client().v1.invoices.pay, params, key, stripe_invoice_id)


def void_invoice(stripe_invoice_id: str, *, key: str) -> dict[str, Any]:  # no parameters
    return _write(_client().v1.invoices.void_invoice, {}, key, stripe_invoice_id)


def mark_uncollectible(stripe_invoice_id: str, *, key: str) -> dict[str, Any]:
    return _write(_client().v1.invoices.mark_uncollectible, {}, key, stripe_invoice_id)


def payment_error(exc: StripeSyncError) -> str:
    """Stripe's reason for a declined charge, as finance reads it."""
    cause = exc.__cause__
    error = getattr(cause, "error", None)
    decline = getattr(error, "decline_code", None) if error is not None else None
    message = getattr(cause, "user_message", None) or str(exc)
    parts = [
        message,
        f"code {exc.code}" if exc.code else "",
        f"decline {decline}" if decline else "",
    ]
    return "; ".join(p for p in parts if p)


# --- Payment methods: Checkout in setup mode --------------------------------------------------


def create_setup_session(*, params: dict[str, Any], key: str) -> dict[str, Any]:
    return _write(_client().v1.checkout.sessions.create, params, key)


def retrieve_setup_intent(setup_intent_id: str) -> dict[str, Any]:
    return _plain(_call(_client().v1.setup_intents.retrieve, setup_intent_id))


# --- Invoice items ----------------------------------------------------------------------------


def create_invoice_item(*, params: dict[str, Any], key: str) -> dict[str, Any]:
    return _write(_client().v1.invoice_items.create, params, key)


def list_invoice_items(*, stripe_invoice_id: str | None = None) -> Iterator[dict[str, Any]]:
    params: dict[str, Any] = {"limit": 100}
    if stripe_invoice_id:
        params["invoice"] = stripe_invoice_id
    return _all(_call(_client().v1.invoice_items.list, params=params))


# --- Billing meters ---------------------------------------------------------------------------


# --- Credit notes -----------------------------------------------------------------------------


def create_credit_note(*, params: dict[str, Any], key: str) -> dict[str, Any]:
    return _write(_client().v1.credit_notes.create, params, key)


def find_credit_note(*, stripe_invoice_id: str, credit_note_id: int) -> dict[str, Any] | None:
    """The Stripe invoice's credit note whose metadata names ours (after a lost answer)."""
    page = _call(
        _client().v1.credit_notes.list, params={"invoice": stripe_invoice_id, "limit": 100}
    )
    for note in _all(page):
        if (note.get("metadata") or {}).get("credit_note_id") == str(credit_note_id):
            return note
    return None


def list_credit_notes(*, stripe_invoice_id: str) -> Iterator[dict[str, Any]]:
    return _all(
        _call(_client().v1.credit_notes.list, params={"invoice": stripe_invoice_id, "limit": 100})
    )


def meter_event_params(
    *, event_name: str, stripe_customer_id: str, value: int, identifier: str, timestamp: datetime
) -> dict[str, Any]:
    return {
        "event_name": event_name,
        "identifier": identifier,
        "timestamp": epoch(timestamp),
        "payload": {"stripe_customer_id": stripe_customer_id, "value": str(value)},
    }


def create_meter_event(*, params: dict[str, Any], key: str) -> dict[str, Any]:
    """Send one meter event (params from meter_event_params, as recorded before sending).
    Whether a resend is needed is decided by the caller, from what it recorded: no answer of
    Stripe is read as "delivered before"."""
    return _write(_client().v1.billing.meter_events.create, params, key)


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
