"""A fake Stripe API for tests: a real HTTP server on 127.0.0.1 that the real `stripe` client
talks to through STRIPE_API_BASE.

It implements the endpoints the Stripe backend calls, with Stripe's shapes: form-encoded
parameters with nested keys (`metadata[invoice_id]`, `period[start]`), JSON objects with their
`object` field and id prefixes (cus_, in_, ii_, mtr_, cs_, seti_, pm_), list objects with
`data`/`has_more`/`url`, errors as `{"error": {"type", "message", "code", "param"}}`. It is as
strict as Stripe documents:

- Parameters: every request is checked against the schema of its operation, derived from
  Stripe's generated parameter types (tests/stripe_params.json, tests/stripe_schema.py): an
  unknown parameter, a missing required one or a value of the wrong type is Stripe's 400
  `invalid_request_error` naming the parameter.
- Idempotency (Stripe's documented rules): a POST's Idempotency-Key (at most 255 characters)
  saves the response once the endpoint started executing: successes, declines, 4xx refusals of
  the operation and 500s alike; a request refused by parameter validation, or conflicting with
  one in flight, saves nothing. The same key with the same parameters replays the saved answer
  (header `Idempotent-Replayed: true`), a 500 too; with other parameters (or another endpoint)
  it is a 400 `idempotency_error`; while the first request with the key is still executing, a
  409 `idempotency_key_in_use`. `forget_idempotency_keys()` plays the 24 hours after which
  Stripe may prune keys.
- Customers carry `balance` (positive: owed to us) and `invoice_settings.default_payment_method`.
  Payment methods are attached by the simulated Checkout flow (`complete_checkout`).
- Invoices: draft -> open (finalize) -> paid (pay) | void | uncollectible; at most 250 invoice
  items per invoice; items only on drafts. At finalization the customer's balance is applied
  (`starting_balance`), and an invoice due nothing, or less than the currency's minimum charge
  (MINIMUM_CHARGE), is marked paid with `amount_paid` 0 and its amount due carried to the
  customer's balance (`ending_balance`); a negative total is credited to the balance. `pay`
  without a payment method (the invoice's or the customer's default) is a 400; a declining
  card a 402 `card_error`. `send` counts e-mails, and so does finalizing a `send_invoice`
  invoice with `auto_advance` (Stripe e-mails it itself).
- Meter events: an identifier is kept METER_IDENTIFIER_WINDOW (Stripe: at least 24 hours);
  within it a repeat is refused with a 400, after it, it counts again. Timestamps must be at
  most 35 days old and 5 minutes ahead.
- Faults, queued per request pattern with `inject()`: "500" is an error of the endpoint after it
  started executing (nothing applied; saved under the key, as Stripe saves it), "429" (with
  Retry-After) is the rate limiter's, before anything (never saved), "timeout" applies the
  request and answers only after `delay` seconds (longer than the client's timeout), "slow"
  holds the key in flight for `delay` seconds before executing (a retry meanwhile gets the
  409), "reset" applies it and drops the connection without an answer.
- Every request is recorded (`requests`, with its Stripe-Version header), so tests can assert
  exact calls and totals.

Webhooks: `event()` builds an event from an object's current state, `sign()` signs a payload
as Stripe does (`t=...,v1=...`, HMAC-SHA256 of "t.payload" with the endpoint secret), and
`deliver()` posts it to the Django test client or to a live server URL.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests import stripe_schema

API_KEY = "sk_test_fake_stripe_key"
WEBHOOK_SECRET = "whsec_fake_stripe_secret"
API_VERSION = "2026-10-28.endive"
METER_EVENT_MAX_AGE = 35 * 24 * 3600
METER_EVENT_MAX_FUTURE = 5 * 60
METER_IDENTIFIER_WINDOW = 24 * 3600
IDEMPOTENCY_KEY_MAX = 255
MAX_INVOICE_ITEMS = 250
# Stripe's minimum charge amounts (minor units) for the currencies it documents; others here
# are not checked.
MINIMUM_CHARGE = {
    "usd": 50,
    "eur": 50,
    "gbp": 30,
    "chf": 50,
    "cad": 50,
    "aud": 50,
    "sek": 300,
    "inr": 50,
    "brl": 50,
    "jpy": 50,
}
NO_PAYMENT_METHOD = (
    "This customer has no attached payment source or default payment method. Please consider "
    "adding a default payment method."
)
# Card numbers of the simulated Checkout flow: Stripe's test cards for success and decline.
CARDS = {"4242424242424242": False, "4000000000000002": True}


class ApiError(Exception):
    """An error answer: status and Stripe's error object."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", **extra):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": type_, "message": message, **extra}}


@dataclass
class Recorded:
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    stripe_version: str | None = None
    status: int | None = None
    replayed: bool = False
    fault: str | None = None


@dataclass
class Fault:
    kind: str  # "500" | "429" | "timeout" | "slow" | "reset"
    method: str
    path: re.Pattern[str]
    retry_after: int = 1
    delay: float = 2.0


@dataclass
class _Stored:
    method: str
    path: str
    params: dict[str, Any]
    status: int
    body: dict[str, Any]


def _nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding back to nested values: a[b]=1 -> {"a": {"b": "1"}}, a[0] lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def lists(value: Any) -> Any:
        if isinstance(value, dict):
            if value and all(k.isdigit() for k in value):
                return [lists(value[k]) for k in sorted(value, key=int)]
            return {k: lists(v) for k, v in value.items()}
        return value

    return lists(root)


def _bool(value: Any, default: bool = False) -> bool:
    if value is None:
        return default
    return str(value).lower() == "true"


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


class FakeStripe:
    """The fake's state and its HTTP server (start() once, reset() between tests)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.api_key = API_KEY
        self.webhook_secret = WEBHOOK_SECRET
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> FakeStripe:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fake-stripe")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def reset(self) -> None:
        with self.lock:
            self._ids = itertools.count(1)
            self.customers: dict[str, dict[str, Any]] = {}
            self.invoices: dict[str, dict[str, Any]] = {}
            self.invoice_items: dict[str, dict[str, Any]] = {}
            self.credit_notes: dict[str, dict[str, Any]] = {}
            self.meters: dict[str, dict[str, Any]] = {}
            self.meter_events: list[dict[str, Any]] = []
            self.idempotency: dict[str, _Stored] = {}
            self.in_flight: set[str] = set()
            self.payment_methods: dict[str, dict[str, Any]] = {}
            self.setup_intents: dict[str, dict[str, Any]] = {}
            self.checkout_sessions: dict[str, dict[str, Any]] = {}
            self.credit_notes: dict[str, dict[str, Any]] = {}
            self.meter_identifiers: dict[str, int] = {}  # identifier -> when first seen
            self.requests: list[Recorded] = []
            self.faults: list[Fault] = []
            self.declining: set[str] = set()
            self.declining_methods: set[str] = set()
            # Test control: a customer created from now on already has a default card, as if
            # it had gone through Checkout before its first invoice (Stripe: none).
            self.cards_for_new_customers = False
            self.no_card_for: set[str] = set()  # ...except these (metadata external_id)
            self.emails_sent: dict[str, int] = {}

    # --- test controls --------------------------------------------------------------------

    def inject(
        self,
        kind: str,
        *,
        method: str = "POST",
        path: str = r"/v1/.*",
        times: int = 1,
        retry_after: int = 1,
        delay: float = 2.0,
    ) -> None:
        """Queue `times` faults for the next requests matching method and path (a regex)."""
        assert kind in {"500", "429", "timeout", "slow", "reset"}, kind
        with self.lock:
            for _ in range(times):
                self.faults.append(Fault(kind, method, re.compile(path), retry_after, delay))

    def forget_idempotency_keys(self, *, meter_identifiers: bool = True) -> None:
        """What Stripe may do 24 hours after a key was first used (meter-event identifiers
        too, unless `meter_identifiers` is False)."""
        with self.lock:
            self.idempotency.clear()
            if meter_identifiers:
                self.meter_identifiers.clear()

    def decline_payments(self, stripe_customer_id: str) -> None:
        with self.lock:
            self.declining.add(stripe_customer_id)

    def attach_card(
        self, stripe_customer_id: str, *, number: str = "4242424242424242", default: bool = True
    ) -> str:
        """A card attached to the customer (as the dashboard or a Checkout flow would), made
        its invoice default unless `default` is False. Returns the payment method's id."""
        with self.lock:
            pm = {
                "id": self._id("pm"),
                "object": "payment_method",
                "type": "card",
                "card": {"brand": "visa", "last4": number[-4:]},
                "customer": stripe_customer_id,
                "created": int(time.time()),
                "livemode": False,
                "metadata": {},
            }
            self.payment_methods[pm["id"]] = pm
            if CARDS.get(number):
                self.declining_methods.add(pm["id"])
            if default:
                self.customers[stripe_customer_id]["invoice_settings"]["default_payment_method"] = (
                    pm["id"]
                )
            return pm["id"]

    def complete_checkout(
        self, session_id: str, *, number: str = "4242424242424242"
    ) -> dict[str, Any]:
        """The customer enters a card on the Checkout page of a setup-mode session: the card
        is attached to the customer (not made its default: that is ours to do), the session's
        SetupIntent succeeds, the session completes. Returns the session."""
        with self.lock:
            session = self.checkout_sessions[session_id]
            assert session["mode"] == "setup" and session["status"] == "open", session
            pm_id = self.attach_card(session["customer"], number=number, default=False)
            intent = {
                "id": self._id("seti"),
                "object": "setup_intent",
                "customer": session["customer"],
                "payment_method": pm_id,
                "status": "succeeded",
                "usage": "off_session",
                "created": int(time.time()),
                "livemode": False,
                "metadata": dict(session.get("setup_intent_metadata") or {}),
            }
            self.setup_intents[intent["id"]] = intent
            session["setup_intent"] = intent["id"]
            session["status"] = "complete"
            session["url"] = None
            return self._session_view(session)

    def set_customer_balance(self, stripe_customer_id: str, balance: int) -> None:
        with self.lock:
            self.customers[stripe_customer_id]["balance"] = balance

    def create_meter(self, event_name: str) -> dict[str, Any]:
        with self.lock:
            meter = {
                "id": self._id("mtr"),
                "object": "billing.meter",
                "created": int(time.time()),
                "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
                "default_aggregation": {"formula": "sum"},
                "display_name": event_name,
                "event_name": event_name,
                "livemode": False,
                "status": "active",
                "value_settings": {"event_payload_key": "value"},
            }
            self.meters[meter["id"]] = meter
            return meter

    def requests_to(self, method: str, path: str) -> list[Recorded]:
        pattern = re.compile(path)
        with self.lock:
            return [r for r in self.requests if r.method == method and pattern.fullmatch(r.path)]

    def invoices_for(self, our_invoice_id: int) -> list[dict[str, Any]]:
        with self.lock:
            return [
                self._invoice_view(inv)
                for inv in self.invoices.values()
                if inv["metadata"].get("invoice_id") == str(our_invoice_id)
            ]

    def items_of(self, stripe_invoice_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                dict(item)
                for item in self.invoice_items.values()
                if item["invoice"] == stripe_invoice_id
            ]

    def set_item_amount(self, item_id: str, amount: int) -> None:
        """Change an item behind our back (what reconcile must notice)."""
        with self.lock:
            self.invoice_items[item_id]["amount"] = amount

    def set_invoice_status(self, stripe_invoice_id: str, status: str) -> dict[str, Any]:
        """A change made in the Stripe dashboard (or by Stripe's own collection)."""
        with self.lock:
            invoice = self.invoices[stripe_invoice_id]
            invoice["status"] = status
            transition = {
                "paid": "paid_at",
                "void": "voided_at",
                "uncollectible": "marked_uncollectible_at",
            }.get(status)
            if transition:
                invoice["status_transitions"][transition] = int(time.time())
            if status == "paid":  # paid in the dashboard, or collected by Stripe's retries
                invoice["amount_paid"] += invoice["amount_remaining"]
                invoice["amount_remaining"] = 0
            return self._invoice_view(invoice)

    def meter_total(self, event_name: str, stripe_customer_id: str) -> Decimal:
        with self.lock:
            return sum(
                (
                    Decimal(e["payload"]["value"])
                    for e in self.meter_events
                    if e["event_name"] == event_name
                    and e["payload"].get("stripe_customer_id") == stripe_customer_id
                ),
                Decimal(0),
            )

    # --- webhooks -------------------------------------------------------------------------

    def event(
        self, type_: str, stripe_object: dict[str, Any], *, created: int | None = None
    ) -> dict[str, Any]:
        """An event as Stripe sends it, carrying a snapshot of the object."""
        with self.lock:
            return {
                "id": self._id("evt"),
                "object": "event",
                "api_version": API_VERSION,
                "created": created if created is not None else int(time.time()),
                "data": {"object": json.loads(json.dumps(stripe_object))},
                "livemode": False,
                "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None},
                "type": type_,
            }

    def invoice_event(self, type_: str, stripe_invoice_id: str, **kwargs: Any) -> dict[str, Any]:
        with self.lock:
            return self.event(type_, self._invoice_view(self.invoices[stripe_invoice_id]), **kwargs)

    def sign(
        self, payload: bytes, *, timestamp: int | None = None, secret: str | None = None
    ) -> str:
        t = int(time.time()) if timestamp is None else timestamp
        signed = f"{t}.".encode() + payload
        digest = hmac.new((secret or self.webhook_secret).encode(), signed, hashlib.sha256)
        return f"t={t},v1={digest.hexdigest()}"

    def deliver(
        self,
        target: Any,
        event: dict[str, Any],
        *,
        timestamp: int | None = None,
        secret: str | None = None,
        signature: str | None = None,
        path: str = "/webhooks/stripe",
    ) -> Any:
        """POST a signed event to a Django test client (target) or a live server URL."""
        payload = json.dumps(event).encode()
        header = signature or self.sign(payload, timestamp=timestamp, secret=secret)
        if isinstance(target, str):
            import requests

            return requests.post(
                target.rstrip("/") + path,
                data=payload,
                headers={"Content-Type": "application/json", "Stripe-Signature": header},
                timeout=10,
            )
        return target.post(
            path, data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=header
        )

    # --- request handling -----------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids):06d}"

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for index, fault in enumerate(self.faults):
                if fault.method == method and fault.path.fullmatch(path):
                    return self.faults.pop(index)
        return None

    def handle(
        self,
        method: str,
        path: str,
        params: dict[str, Any],
        key: str | None,
        fault: Fault | None = None,
    ) -> tuple[int, dict[str, Any], bool]:
        """(status, body, replayed) for one request, applying it under the lock, in Stripe's
        order: route, parameter validation, the idempotency layer, the endpoint."""
        idempotent = method == "POST" and bool(key)
        with self.lock:
            try:
                name, args, template = self._match(method, path)
                self._validate(method, template, params)
            except ApiError as exc:
                return exc.status, exc.body, False
            if idempotent:
                assert key is not None
                if len(key) > IDEMPOTENCY_KEY_MAX:
                    message = f"Idempotency keys may be at most {IDEMPOTENCY_KEY_MAX} characters."
                    return 400, ApiError(400, message, param="Idempotency-Key").body, False
                if key in self.in_flight:
                    error = ApiError(
                        409,
                        "There is currently another in-progress request using this Stripe "
                        "API Idempotency-Key. Please try again later.",
                        code="idempotency_key_in_use",
                    )
                    return 409, error.body, False
                stored = self.idempotency.get(key)
                if stored is not None:
                    if (stored.method, stored.path, stored.params) != (method, path, params):
                        error = ApiError(
                            400,
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with. Try using a key other than "
                            f"'{key}' if you meant to execute a different request.",
                            type_="idempotency_error",
                        )
                        return 400, error.body, False
                    return stored.status, stored.body, True
                self.in_flight.add(key)
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay)  # executing, the key in flight
        with self.lock:
            try:
                if fault is not None and fault.kind == "500":
                    raise ApiError(500, "An unknown error occurred", type_="api_error")
                status, body = 200, getattr(self, name)(params, **args)
            except ApiError as exc:
                status, body = exc.status, exc.body
            if idempotent:
                assert key is not None
                self.in_flight.discard(key)
                self.idempotency[key] = _Stored(method, path, params, status, body)
            return status, body, False

    def _match(self, method: str, path: str) -> tuple[str, dict[str, str], str]:
        for route_method, pattern, name in _ROUTES:
            match = re.fullmatch(pattern, path)
            if route_method == method and match:
                template = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern)
                return name, match.groupdict(), template
        raise ApiError(404, f"Unrecognized request URL ({method}: {path}).")

    def _validate(self, method: str, template: str, params: dict[str, Any]) -> None:
        schema = stripe_schema.operation(method, template)
        if schema is None:
            raise AssertionError(f"no parameter schema for {method} {template}: regenerate it")
        problem = stripe_schema.check(schema, params)
        if problem is not None:
            message, param, code = problem
            extra = {"param": param}
            if code:
                extra["code"] = code
                extra["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
            raise ApiError(400, message, **extra)

    # --- customers ------------------------------------------------------------------------

    def create_customer(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = {
            "id": self._id("cus"),
            "object": "customer",
            "created": int(time.time()),
            "email": params.get("email"),
            "livemode": False,
            "metadata": params.get("metadata", {}),
            "name": params.get("name"),
            "balance": 0,
            "currency": None,
            "default_source": None,
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
        }
        self.customers[customer["id"]] = customer
        if self.cards_for_new_customers and (
            customer["metadata"].get("external_id") not in self.no_card_for
        ):
            self.attach_card(customer["id"])
        return customer

    def update_customer(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        customer = self.get_customer({}, id)
        settings = params.get("invoice_settings") or {}
        if "default_payment_method" in settings:
            pm_id = settings["default_payment_method"]
            pm = self.payment_methods.get(pm_id)
            if pm is None:
                raise ApiError(
                    400,
                    f"No such PaymentMethod: '{pm_id}'",
                    code="resource_missing",
                    param="invoice_settings[default_payment_method]",
                )
            if pm["customer"] != id:
                raise ApiError(
                    400,
                    f"The customer does not have a payment method with the ID {pm_id}. The "
                    "payment method must be attached to the customer.",
                    param="invoice_settings[default_payment_method]",
                )
            customer["invoice_settings"]["default_payment_method"] = pm_id
        for key, value in (params.get("metadata") or {}).items():
            if value == "":
                customer["metadata"].pop(key, None)
            else:
                customer["metadata"][key] = value
        for field_name in ("name", "email"):
            if field_name in params:
                customer[field_name] = params[field_name] or None
        return customer

    def get_customer(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        if id not in self.customers or self.customers[id].get("deleted"):
            raise ApiError(404, f"No such customer: '{id}'", code="resource_missing", param="id")
        return self.customers[id]

    def search_customers(self, params: dict[str, Any]) -> dict[str, Any]:
        match = re.fullmatch(r"metadata\['([^']+)'\]:'([^']*)'", params.get("query", ""))
        if not match:
            raise ApiError(400, "This fake only searches metadata['key']:'value'.")
        key, value = match.groups()
        found = [c for c in self.customers.values() if c["metadata"].get(key) == value]
        return {
            "object": "search_result",
            "data": found,
            "has_more": False,
            "next_page": None,
            "url": "/v1/customers/search",
        }

    # --- invoices -------------------------------------------------------------------------

    def _invoice_view(self, invoice: dict[str, Any]) -> dict[str, Any]:
        items = [i for i in self.invoice_items.values() if i["invoice"] == invoice["id"]]
        total = sum(i["amount"] for i in items)
        if invoice["status"] == "draft":  # the balance is applied at finalization
            amount_due = max(0, total)
            settled = {"amount_paid": 0, "amount_remaining": amount_due}
        else:
            amount_due = invoice["amount_due"]
            settled = {
                "amount_paid": invoice["amount_paid"],
                "amount_remaining": invoice["amount_remaining"],
            }
        lines = [
            {
                "id": f"il_{item['id']}",
                "object": "line_item",
                "amount": item["amount"],
                "currency": item["currency"],
                "description": item["description"],
                "invoice": invoice["id"],
                "metadata": item["metadata"],
                "period": item["period"],
                "quantity": item["quantity"],
                "parent": {
                    "type": "invoice_item_details",
                    "invoice_item_details": {"invoice_item": item["id"]},
                },
            }
            for item in items
        ]
        return {
            **invoice,
            "subtotal": total,
            "total": total,
            "amount_due": amount_due,
            **settled,
            "pre_payment_credit_notes_amount": self._pre_payment_credits(invoice["id"]),
            "post_payment_credit_notes_amount": sum(
                n["post_payment_amount"] for n in self._notes_of(invoice["id"])
            ),
            "lines": {
                "object": "list",
                "data": lines,
                "has_more": False,
                "total_count": len(lines),
                "url": f"/v1/invoices/{invoice['id']}/lines",
            },
        }

    def _invoice(self, id: str) -> dict[str, Any]:
        if id not in self.invoices:
            raise ApiError(404, f"No such invoice: '{id}'", code="resource_missing", param="id")
        return self.invoices[id]

    def create_invoice(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = params.get("customer")
        if customer not in self.customers:
            raise ApiError(404, f"No such customer: '{customer}'", code="resource_missing")
        method = params.get("collection_method", "charge_automatically")
        if method == "send_invoice" and "days_until_due" not in params:
            raise ApiError(400, "Missing required param: days_until_due.", param="days_until_due")
        invoice = {
            "id": self._id("in"),
            "object": "invoice",
            "auto_advance": _bool(params.get("auto_advance"), default=True),
            "paid_out_of_band": False,
            "collection_method": method,
            "created": int(time.time()),
            "currency": params.get("currency", "usd"),
            "customer": customer,
            "days_until_due": int(params["days_until_due"]) if "days_until_due" in params else None,
            "description": params.get("description"),
            "livemode": False,
            "metadata": params.get("metadata", {}),
            "number": None,
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "status": "draft",
            "amount_due": 0,
            "amount_paid": 0,
            "amount_remaining": 0,
            "starting_balance": 0,
            "ending_balance": None,
            "attempt_count": 0,
            "attempted": False,
            "default_payment_method": params.get("default_payment_method"),
            "last_payment_error": None,
            "status_transitions": {
                "finalized_at": None,
                "paid_at": None,
                "voided_at": None,
                "marked_uncollectible_at": None,
            },
        }
        self.invoices[invoice["id"]] = invoice
        if params.get("pending_invoice_items_behavior", "exclude") == "include":
            for item in self.invoice_items.values():
                if item["customer"] == customer and item["invoice"] is None:
                    item["invoice"] = invoice["id"]
        return self._invoice_view(invoice)

    def list_invoices(self, params: dict[str, Any]) -> dict[str, Any]:
        rows = [
            self._invoice_view(i)
            for i in self.invoices.values()
            if "customer" not in params or i["customer"] == params["customer"]
        ]
        return self._page(rows, params, "/v1/invoices")

    def get_invoice(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        return self._invoice_view(self._invoice(id))

    def finalize_invoice(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        invoice = self._invoice(id)
        if invoice["status"] != "draft":
            raise ApiError(
                400, f"This invoice is already finalized ({id}).", code="invoice_not_editable"
            )
        now = int(time.time())
        invoice["status"] = "open"
        invoice["number"] = f"FAKE-{next(self._ids):06d}"
        invoice["status_transitions"]["finalized_at"] = now
        invoice["hosted_invoice_url"] = f"https://invoice.stripe.com/i/acct_fake/{id}"
        invoice["invoice_pdf"] = f"https://pay.stripe.com/invoice/acct_fake/{id}/pdf"
        if "auto_advance" in params:
            invoice["auto_advance"] = _bool(params["auto_advance"])
        # Stripe applies the customer's balance, then settles what it cannot charge: nothing
        # due, or less than the currency's minimum charge, is marked paid (amount_paid 0) and
        # what was due is carried to the customer's balance for the next invoice.
        customer = self.customers[invoice["customer"]]
        total = self._invoice_view(invoice)["total"]
        starting = customer["balance"]
        due = total + starting
        invoice["starting_balance"] = starting
        invoice["amount_due"] = max(0, due)
        invoice["amount_paid"] = 0
        invoice["amount_remaining"] = max(0, due)
        ending = 0 if due > 0 else due  # a credit left over stays on the balance
        if 0 < due < MINIMUM_CHARGE.get(invoice["currency"], 1):
            ending = due
            invoice["amount_remaining"] = 0
        customer["balance"] = ending
        invoice["ending_balance"] = ending
        if invoice["amount_remaining"] == 0:
            invoice["status"] = "paid"
            invoice["status_transitions"]["paid_at"] = now
        elif invoice["collection_method"] == "send_invoice" and invoice["auto_advance"]:
            self.emails_sent[id] = self.emails_sent.get(id, 0) + 1  # Stripe e-mails it itself
        return self._invoice_view(invoice)

    def pay_invoice(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        invoice = self._invoice(id)
        if invoice["status"] == "paid":
            raise ApiError(400, "Invoice is already paid", code="invoice_already_paid")
        if invoice["status"] not in {"open", "uncollectible"}:
            raise ApiError(400, f"You cannot pay an invoice that is {invoice['status']}.")
        if _bool(params.get("paid_out_of_band")):
            invoice["paid_out_of_band"] = True
        else:
            customer = self.customers[invoice["customer"]]
            method = (
                params.get("payment_method")
                or invoice.get("default_payment_method")
                or customer["invoice_settings"]["default_payment_method"]
                or customer.get("default_source")
            )
            if not method:
                raise ApiError(400, NO_PAYMENT_METHOD)
            invoice["attempted"] = True
            invoice["attempt_count"] += 1
            if invoice["customer"] in self.declining or method in self.declining_methods:
                error = {
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": "generic_decline",
                    "message": "Your card was declined.",
                }
                invoice["last_payment_error"] = error
                raise ApiError(
                    402,
                    "Your card was declined.",
                    type_="card_error",
                    code="card_declined",
                    decline_code="generic_decline",
                )
            invoice["amount_paid"] = invoice["amount_remaining"]
        invoice["amount_remaining"] = 0
        invoice["status"] = "paid"
        invoice["status_transitions"]["paid_at"] = int(time.time())
        return self._invoice_view(invoice)

    def send_invoice(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        invoice = self._invoice(id)
        if invoice["collection_method"] != "send_invoice" or invoice["status"] != "open":
            raise ApiError(400, "You can only send open invoices with collection send_invoice.")
        self.emails_sent[id] = self.emails_sent.get(id, 0) + 1
        return self._invoice_view(invoice)

    def void_invoice(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        invoice = self._invoice(id)
        if invoice["status"] not in {"open", "uncollectible"}:
            raise ApiError(400, f"You cannot void an invoice that is {invoice['status']}.")
        return self.set_invoice_status(id, "void")

    def mark_uncollectible(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        invoice = self._invoice(id)
        if invoice["status"] != "open":
            raise ApiError(400, f"You cannot mark an invoice that is {invoice['status']}.")
        return self.set_invoice_status(id, "uncollectible")

    # --- invoice items --------------------------------------------------------------------

    def create_item(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = params.get("customer")
        if customer not in self.customers:
            raise ApiError(404, f"No such customer: '{customer}'", code="resource_missing")
        invoice_id = params.get("invoice")
        if invoice_id is not None:
            invoice = self._invoice(invoice_id)
            if invoice["status"] != "draft":
                raise ApiError(
                    400,
                    "You can only add invoice items to draft invoices.",
                    code="invoice_not_editable",
                )
            if invoice["customer"] != customer:
                raise ApiError(400, "The invoice belongs to another customer.")
            if params.get("currency", invoice["currency"]) != invoice["currency"]:
                raise ApiError(400, "The item's currency differs from the invoice's.")
            held = sum(1 for i in self.invoice_items.values() if i["invoice"] == invoice_id)
            if held >= MAX_INVOICE_ITEMS:
                raise ApiError(
                    400,
                    f"An invoice may hold at most {MAX_INVOICE_ITEMS} invoice items.",
                    param="invoice",
                )
        quantity = int(params.get("quantity", 1))
        if "amount" in params:
            amount = int(params["amount"])
        elif "unit_amount_decimal" in params:
            unit = Decimal(params["unit_amount_decimal"])
            amount = int((unit * quantity).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        else:
            raise ApiError(400, "Missing required param: amount.", param="amount")
        period = params.get("period") or {}
        item = {
            "id": self._id("ii"),
            "object": "invoiceitem",
            "amount": amount,
            "currency": params.get("currency", "usd"),
            "customer": customer,
            "date": int(time.time()),
            "description": params.get("description"),
            "invoice": invoice_id,
            "livemode": False,
            "metadata": params.get("metadata", {}),
            "period": {
                "start": int(period.get("start", time.time())),
                "end": int(period.get("end", time.time())),
            },
            "proration": False,
            "quantity": quantity,
        }
        if item["period"]["end"] < item["period"]["start"]:
            raise ApiError(400, "period[end] must be after period[start].", param="period")
        self.invoice_items[item["id"]] = item
        return item

    def list_items(self, params: dict[str, Any]) -> dict[str, Any]:
        rows = [
            dict(i)
            for i in self.invoice_items.values()
            if ("invoice" not in params or i["invoice"] == params["invoice"])
            and ("customer" not in params or i["customer"] == params["customer"])
        ]
        return self._page(rows, params, "/v1/invoiceitems")

    # --- billing meters -------------------------------------------------------------------

    def create_meter_event(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("event_name")
        if name not in {m["event_name"] for m in self.meters.values()}:
            raise ApiError(400, f"No active meter was found matching event_name {name}.")
        identifier = params.get("identifier") or self._id("mev")
        now = int(time.time())
        seen = self.meter_identifiers.get(identifier)
        if seen is not None and now - seen < METER_IDENTIFIER_WINDOW:
            raise ApiError(400, f"An event already exists with identifier {identifier}.")
        timestamp = int(params.get("timestamp", now))
        if timestamp < now - METER_EVENT_MAX_AGE or timestamp > now + METER_EVENT_MAX_FUTURE:
            raise ApiError(
                400,
                "Timestamp must be within the past 35 calendar days or up to 5 minutes in the "
                "future.",
                param="timestamp",
            )
        payload = params.get("payload") or {}
        if not re.fullmatch(r"-?\d+", str(payload.get("value", ""))):
            raise ApiError(400, "The payload value must be a whole number.", param="payload")
        event = {
            "object": "billing.meter_event",
            "created": now,
            "event_name": name,
            "identifier": identifier,
            "livemode": False,
            "payload": payload,
            "timestamp": timestamp,
        }
        self.meter_events.append(event)
        self.meter_identifiers[identifier] = now
        return event

    def list_meters(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._page(list(self.meters.values()), params, "/v1/billing/meters")

    def meter_event_summaries(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        meter = self.meters.get(id)
        if meter is None:
            raise ApiError(404, f"No such billing meter: '{id}'", code="resource_missing")
        start, end = int(params["start_time"]), int(params["end_time"])
        if start % 60 or end % 60:
            raise ApiError(400, "start_time and end_time must be aligned with minute boundaries.")
        total = sum(
            (
                Decimal(e["payload"]["value"])
                for e in self.meter_events
                if e["event_name"] == meter["event_name"]
                and e["payload"].get("stripe_customer_id") == params.get("customer")
                and start <= e["timestamp"] < end
            ),
            Decimal(0),
        )
        summary = {
            "id": self._id("mtrusg"),
            "object": "billing.meter_event_summary",
            "aggregated_value": _number(total),
            "end_time": end,
            "livemode": False,
            "meter": id,
            "start_time": start,
        }
        return {
            "object": "list",
            "data": [summary],
            "has_more": False,
            "url": f"/v1/billing/meters/{id}/event_summaries",
        }

    # --- payment methods: Checkout in setup mode ------------------------------------------

    def _session_view(self, session: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in session.items() if k != "setup_intent_metadata"}

    def create_checkout_session(self, params: dict[str, Any]) -> dict[str, Any]:
        mode = params.get("mode")
        if mode != "setup":
            raise ApiError(400, "This fake serves setup-mode sessions only.", param="mode")
        customer = params.get("customer")
        if customer not in self.customers:
            raise ApiError(400, f"No such customer: '{customer}'", code="resource_missing")
        if params.get("ui_mode", "hosted") == "hosted" and not params.get("success_url"):
            raise ApiError(400, "Missing required param: success_url.", param="success_url")
        if "payment_method_types" not in params and "currency" not in params:
            raise ApiError(
                400,
                "You must provide `currency` in `setup` mode when `payment_method_types` is "
                "not passed.",
                param="currency",
            )
        session_id = self._id("cs_test")
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": "setup",
            "status": "open",
            "customer": customer,
            "currency": params.get("currency"),
            "setup_intent": None,
            "success_url": params.get("success_url"),
            "cancel_url": params.get("cancel_url"),
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
            "created": int(time.time()),
            "expires_at": int(time.time()) + 24 * 3600,
            "livemode": False,
            "metadata": params.get("metadata", {}),
            "client_reference_id": params.get("client_reference_id"),
            "setup_intent_metadata": (params.get("setup_intent_data") or {}).get("metadata"),
        }
        self.checkout_sessions[session_id] = session
        return self._session_view(session)

    def get_checkout_session(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        if id not in self.checkout_sessions:
            raise ApiError(404, f"No such checkout.session: '{id}'", code="resource_missing")
        return self._session_view(self.checkout_sessions[id])

    def get_setup_intent(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        if id not in self.setup_intents:
            raise ApiError(404, f"No such setupintent: '{id}'", code="resource_missing")
        return self.setup_intents[id]

    # --- credit notes -----------------------------------------------------------------------
    # As Stripe's API reference has them: a credit note adjusts a finalized invoice (open,
    # paid or uncollectible; not a draft or a void one). One of `amount` or `lines` is given;
    # a line is an `invoice_line_item` (one of the invoice's lines, with `amount` or
    # `quantity`) or a `custom_line_item` (`description`, `unit_amount`, `quantity`, default
    # 1). The part up to what remains due is the pre-payment amount (it lowers amount_due);
    # the rest, the post-payment amount, must be sent somewhere: refund_amount +
    # credit_amount + out_of_band_amount must equal it. All credit notes of an invoice
    # together never exceed its total.

    def _notes_of(self, stripe_invoice_id: str) -> list[dict[str, Any]]:
        return [n for n in self.credit_notes.values() if n["invoice"] == stripe_invoice_id]

    def _pre_payment_credits(self, stripe_invoice_id: str) -> int:
        return sum(
            n["pre_payment_amount"]
            for n in self.credit_notes.values()
            if n["invoice"] == stripe_invoice_id and n["status"] == "issued"
        )

    def create_credit_note(self, params: dict[str, Any]) -> dict[str, Any]:
        invoice_id = params.get("invoice")
        if not invoice_id:
            raise ApiError(400, "Missing required param: invoice.", param="invoice")
        invoice = self._invoice(invoice_id)
        if invoice["status"] not in {"open", "paid", "uncollectible"}:
            raise ApiError(
                400,
                f"You can only create credit notes for finalized invoices; {invoice_id} is "
                f"{invoice['status']}.",
                param="invoice",
            )
        view = self._invoice_view(invoice)
        lines_in = params.get("lines")
        if lines_in is None and "amount" not in params:
            raise ApiError(400, "One of `amount`, `lines`, or `shipping_cost` must be provided.")
        invoice_lines = {line["id"]: line for line in view["lines"]["data"]}
        lines = []
        for index, line in enumerate(lines_in or []):
            kind = line.get("type")
            if kind == "invoice_line_item":
                target = invoice_lines.get(line.get("invoice_line_item"))
                if target is None:
                    raise ApiError(
                        400,
                        f"Invalid invoice line item: {line.get('invoice_line_item')}",
                        param=f"lines[{index}][invoice_line_item]",
                    )
                if "amount" in line:
                    amount = int(line["amount"])
                elif "quantity" in line:
                    amount = int(line["quantity"]) * target["amount"] // max(target["quantity"], 1)
                else:
                    raise ApiError(
                        400, "Provide amount or quantity.", param=f"lines[{index}][amount]"
                    )
                description = target["description"]
                quantity = int(line.get("quantity", target["quantity"]))
            elif kind == "custom_line_item":
                if "unit_amount" not in line and "unit_amount_decimal" not in line:
                    raise ApiError(
                        400,
                        "Missing required param: unit_amount.",
                        param=f"lines[{index}][unit_amount]",
                    )
                if not line.get("description"):
                    raise ApiError(
                        400,
                        "Missing required param: description.",
                        param=f"lines[{index}][description]",
                    )
                quantity = int(line.get("quantity", 1))
                unit = Decimal(line.get("unit_amount", line.get("unit_amount_decimal")))
                amount = int((unit * quantity).quantize(Decimal(1), rounding=ROUND_HALF_UP))
                description = line["description"]
            else:
                raise ApiError(
                    400,
                    f"Invalid lines[{index}][type]: must be one of invoice_line_item or "
                    "custom_line_item",
                    param=f"lines[{index}][type]",
                )
            if amount <= 0:
                raise ApiError(400, "Credit note line amounts must be positive.")
            lines.append(
                {
                    "id": self._id("cnli"),
                    "object": "credit_note_line_item",
                    "amount": amount,
                    "description": description,
                    "invoice_line_item": line.get("invoice_line_item"),
                    "quantity": quantity,
                    "type": kind,
                }
            )
        total = sum(line["amount"] for line in lines) if lines else int(params["amount"])
        if lines and "amount" in params and int(params["amount"]) != total:
            raise ApiError(400, "The amount must equal the sum of the lines.", param="amount")
        earlier = sum(n["total"] for n in self._notes_of(invoice_id))
        if earlier + total > view["total"]:
            raise ApiError(
                400,
                "The sum of the credit notes' amounts cannot exceed the invoice's total "
                f"({view['total']}).",
                param="amount",
            )
        pre = 0 if invoice["status"] == "paid" else min(total, view["amount_remaining"])
        post = total - pre
        settled = sum(
            int(params.get(name, 0))
            for name in ("refund_amount", "credit_amount", "out_of_band_amount")
        )
        if settled != post:
            raise ApiError(
                400,
                f"The sum of credit amount, refund amount and out of band amount ({settled}) "
                f"must equal the credit note's post-payment amount ({post}).",
            )
        note_id = self._id("cn")
        note = {
            "id": note_id,
            "object": "credit_note",
            "amount": total,
            "subtotal": total,
            "total": total,
            "created": int(time.time()),
            "currency": invoice["currency"],
            "customer": invoice["customer"],
            "invoice": invoice_id,
            "livemode": False,
            "memo": params.get("memo"),
            "metadata": params.get("metadata", {}),
            "number": f"{invoice['number']}-CN-{len(self._notes_of(invoice_id)) + 1:02d}",
            "reason": params.get("reason"),
            "status": "issued",
            "type": "post_payment" if post else "pre_payment",
            "pre_payment_amount": pre,
            "post_payment_amount": post,
            "credit_amount": int(params.get("credit_amount", 0)),
            "refund_amount": int(params.get("refund_amount", 0)),
            "out_of_band_amount": int(params.get("out_of_band_amount", 0)),
            "lines": {
                "object": "list",
                "data": lines,
                "has_more": False,
                "url": f"/v1/credit_notes/{note_id}/lines",
            },
        }
        self.credit_notes[note_id] = note
        # The pre-payment part lowers what is due and what remains (never below zero).
        invoice["amount_due"] = max(invoice["amount_due"] - pre, 0)
        invoice["amount_remaining"] = max(invoice["amount_remaining"] - pre, 0)
        if invoice["status"] == "open" and invoice["amount_remaining"] == 0:
            # Stripe marks an open invoice paid once credit notes leave nothing due.
            invoice["status"] = "paid"
            invoice["status_transitions"]["paid_at"] = int(time.time())
        return note

    def list_credit_notes(self, params: dict[str, Any]) -> dict[str, Any]:
        rows = [
            n
            for n in self.credit_notes.values()
            if ("invoice" not in params or n["invoice"] == params["invoice"])
            and ("customer" not in params or n["customer"] == params["customer"])
        ]
        return self._page(rows, params, "/v1/credit_notes")

    # --- lists ----------------------------------------------------------------------------

    def _page(self, rows: list[dict[str, Any]], params: dict[str, Any], url: str) -> dict:
        rows = list(reversed(rows))  # newest first, as Stripe lists
        limit = int(params.get("limit", 10))
        after = params.get("starting_after")
        if after:
            ids = [r["id"] for r in rows]
            rows = rows[ids.index(after) + 1 :] if after in ids else []
        return {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit, "url": url}


_ROUTES = [
    ("POST", r"/v1/customers", "create_customer"),
    ("GET", r"/v1/customers/search", "search_customers"),
    ("GET", r"/v1/customers/(?P<id>[^/]+)", "get_customer"),
    ("POST", r"/v1/customers/(?P<id>[^/]+)", "update_customer"),
    ("POST", r"/v1/invoices", "create_invoice"),
    ("GET", r"/v1/invoices", "list_invoices"),
    ("GET", r"/v1/invoices/(?P<id>[^/]+)", "get_invoice"),
    ("POST", r"/v1/invoices/(?P<id>[^/]+)/finalize", "finalize_invoice"),
    ("POST", r"/v1/invoices/(?P<id>[^/]+)/pay", "pay_invoice"),
    ("POST", r"/v1/invoices/(?P<id>[^/]+)/send", "send_invoice"),
    ("POST", r"/v1/invoices/(?P<id>[^/]+)/void", "void_invoice"),
    ("POST", r"/v1/invoices/(?P<id>[^/]+)/mark_uncollectible", "mark_uncollectible"),
    ("POST", r"/v1/invoiceitems", "create_item"),
    ("POST", r"/v1/credit_notes", "create_credit_note"),
    ("GET", r"/v1/credit_notes", "list_credit_notes"),
    ("GET", r"/v1/invoiceitems", "list_items"),
    ("POST", r"/v1/billing/meter_events", "create_meter_event"),
    ("GET", r"/v1/billing/meters", "list_meters"),
    ("GET", r"/v1/billing/meters/(?P<id>[^/]+)/event_summaries", "meter_event_summaries"),
    ("POST", r"/v1/checkout/sessions", "create_checkout_session"),
    ("GET", r"/v1/checkout/sessions/(?P<id>[^/]+)", "get_checkout_session"),
    ("GET", r"/v1/setup_intents/(?P<id>[^/]+)", "get_setup_intent"),
]


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeStripe/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        fake: FakeStripe = self.server.fake  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        params = _nest(parse_qsl(body if method == "POST" else url.query, keep_blank_values=True))
        key = self.headers.get("Idempotency-Key")
        record = Recorded(method, url.path, params, key, self.headers.get("Stripe-Version"))
        with fake.lock:
            fake.requests.append(record)
        if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
            record.status = 401
            self._answer(401, ApiError(401, "Invalid API Key provided.").body)
            return
        fault = fake._take_fault(method, url.path)
        record.fault = fault.kind if fault else None
        if fault is not None and fault.kind == "429":
            record.status = 429
            error = ApiError(
                429, "Too many requests hit the API too quickly.", code="rate_limit"
            ).body
            self._answer(429, error, headers={"Retry-After": str(fault.retry_after)})
            return
        status, answer, replayed = fake.handle(method, url.path, params, key, fault)
        record.status, record.replayed = status, replayed
        if fault is not None and fault.kind == "reset":
            self._reset()
            return
        if fault is not None and fault.kind == "timeout":
            time.sleep(fault.delay)
        headers = {"Idempotent-Replayed": "true"} if replayed else {}
        self._answer(status, answer, headers=headers)

    def _answer(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Request-Id", f"req_fake{time.monotonic_ns()}")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client gave up (timeout fault)

    def _reset(self) -> None:
        """Drop the connection with a TCP reset, no answer."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass


@pytest.fixture(scope="session")
def fake_stripe_server() -> Iterator[FakeStripe]:
    fake = FakeStripe().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_stripe(fake_stripe_server: FakeStripe, settings: Any) -> FakeStripe:
    """The fake Stripe, emptied, with the settings pointing the real client at it."""
    fake_stripe_server.reset()
    settings.STRIPE_API_KEY = fake_stripe_server.api_key
    settings.STRIPE_API_BASE = fake_stripe_server.url
    settings.STRIPE_WEBHOOK_SECRET = fake_stripe_server.webhook_secret
    settings.STRIPE_TIMEOUT = 0.5  # seconds: the timeout fault outlasts it
    return fake_stripe_server


__all__ = ["API_KEY", "WEBHOOK_SECRET", "FakeStripe", "fake_stripe", "fake_stripe_server"]
