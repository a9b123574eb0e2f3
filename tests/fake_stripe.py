"""A fake Stripe API for tests: a real HTTP server on 127.0.0.1 that the real `stripe` client
talks to through STRIPE_API_BASE.

It implements the endpoints the Stripe backend calls, with Stripe's shapes: form-encoded
parameters with nested keys (`metadata[invoice_id]`, `period[start]`), JSON objects with their
`object` field and id prefixes (cus_, in_, ii_, mtr_), list objects with `data`/`has_more`/`url`,
errors as `{"error": {"type", "message", "code"}}`. Its semantics:

- Idempotency: a POST's Idempotency-Key stores the first answer (a success or a declined
  charge; requests refused by validation are not stored); the same key with the same
  parameters replays it (header `Idempotent-Replayed: true`), with other parameters it is a 400
  `idempotency_error`. `forget_idempotency_keys()` plays the 24 hours after which Stripe may
  prune them.
- Meter events: an identifier seen before is refused with Stripe's 400 "An event already
  exists with identifier ...". Timestamps must be at most 35 days old, 5 minutes ahead.
- Invoices: draft -> open (finalize; a zero total is paid at once) -> paid (pay) | void |
  uncollectible; items only on drafts; `send` counts e-mails.
- Faults, queued per request pattern with `inject()`: "500" and "429" (with Retry-After) answer
  before anything is applied (as Stripe's front end would), "timeout" applies the request and
  answers only after `delay` seconds (longer than the client's timeout), "reset" applies it and
  drops the connection without an answer.
- Every request is recorded (`requests`), so tests can assert exact calls and totals.

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

API_KEY = "sk_test_fake_stripe_key"
WEBHOOK_SECRET = "whsec_fake_stripe_secret"
API_VERSION = "2026-10-28.endive"
METER_EVENT_MAX_AGE = 35 * 24 * 3600
METER_EVENT_MAX_FUTURE = 5 * 60


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
    status: int | None = None
    replayed: bool = False
    fault: str | None = None


@dataclass
class Fault:
    kind: str  # "500" | "429" | "timeout" | "reset"
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
            self.meters: dict[str, dict[str, Any]] = {}
            self.meter_events: list[dict[str, Any]] = []
            self.idempotency: dict[str, _Stored] = {}
            self.requests: list[Recorded] = []
            self.faults: list[Fault] = []
            self.declining: set[str] = set()
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
        assert kind in {"500", "429", "timeout", "reset"}, kind
        with self.lock:
            for _ in range(times):
                self.faults.append(Fault(kind, method, re.compile(path), retry_after, delay))

    def forget_idempotency_keys(self) -> None:
        """What Stripe may do 24 hours after a key was first used."""
        with self.lock:
            self.idempotency.clear()

    def decline_payments(self, stripe_customer_id: str) -> None:
        with self.lock:
            self.declining.add(stripe_customer_id)

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
        self, method: str, path: str, params: dict[str, Any], key: str | None
    ) -> tuple[int, dict[str, Any], bool]:
        """(status, body, replayed) for one request, applying it under the lock."""
        with self.lock:
            if method == "POST" and key:
                stored = self.idempotency.get(key)
                if stored is not None:
                    if (stored.method, stored.path, stored.params) != (method, path, params):
                        return (
                            400,
                            ApiError(
                                400,
                                "Keys for idempotent requests can only be used with the same "
                                f"parameters they were first used with. Try using a key other "
                                f"than '{key}' if you meant to execute a different request.",
                                type_="idempotency_error",
                            ).body,
                            False,
                        )
                    return stored.status, stored.body, True
            try:
                status, body = 200, self._route(method, path, params)
            except ApiError as exc:
                status, body = exc.status, exc.body
            # Stripe keeps the answer once the endpoint ran: successes, and a declined charge;
            # a request refused by validation (other 4xx) is not kept and may be sent again.
            if method == "POST" and key and (status < 400 or status == 402):
                self.idempotency[key] = _Stored(method, path, params, status, body)
            return status, body, False

    def _route(self, method: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
        for route_method, pattern, name in _ROUTES:
            match = re.fullmatch(pattern, path)
            if route_method == method and match:
                return getattr(self, name)(params, **match.groupdict())
        raise ApiError(404, f"Unrecognized request URL ({method}: {path}).")

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
        }
        self.customers[customer["id"]] = customer
        return customer

    def get_customer(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        if id not in self.customers:
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
        paid = invoice["status"] == "paid"
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
            "amount_due": total,
            "amount_paid": total if paid else 0,
            "amount_remaining": 0 if paid else total,
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
        if self._invoice_view(invoice)["amount_due"] == 0:
            invoice["status"] = "paid"
            invoice["status_transitions"]["paid_at"] = now
        return self._invoice_view(invoice)

    def pay_invoice(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        invoice = self._invoice(id)
        if invoice["status"] == "paid":
            raise ApiError(400, "Invoice is already paid", code="invoice_already_paid")
        if invoice["status"] not in {"open", "uncollectible"}:
            raise ApiError(400, f"You cannot pay an invoice that is {invoice['status']}.")
        if _bool(params.get("paid_out_of_band")):
            invoice["paid_out_of_band"] = True
        elif invoice["customer"] in self.declining:
            raise ApiError(
                402,
                "Your card was declined.",
                type_="card_error",
                code="card_declined",
                decline_code="generic_decline",
            )
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
        if any(e["identifier"] == identifier for e in self.meter_events):
            raise ApiError(400, f"An event already exists with identifier {identifier}.")
        now = int(time.time())
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
    ("POST", r"/v1/invoices", "create_invoice"),
    ("GET", r"/v1/invoices", "list_invoices"),
    ("GET", r"/v1/invoices/(?P<id>[^/]+)", "get_invoice"),
    ("POST", r"/v1/invoices/(?P<id>[^/]+)/finalize", "finalize_invoice"),
    ("POST", r"/v1/invoices/(?P<id>[^/]+)/pay", "pay_invoice"),
    ("POST", r"/v1/invoices/(?P<id>[^/]+)/send", "send_invoice"),
    ("POST", r"/v1/invoices/(?P<id>[^/]+)/void", "void_invoice"),
    ("POST", r"/v1/invoices/(?P<id>[^/]+)/mark_uncollectible", "mark_uncollectible"),
    ("POST", r"/v1/invoiceitems", "create_item"),
    ("GET", r"/v1/invoiceitems", "list_items"),
    ("POST", r"/v1/billing/meter_events", "create_meter_event"),
    ("GET", r"/v1/billing/meters", "list_meters"),
    ("GET", r"/v1/billing/meters/(?P<id>[^/]+)/event_summaries", "meter_event_summaries"),
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
        record = Recorded(method, url.path, params, key)
        with fake.lock:
            fake.requests.append(record)
        if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
            record.status = 401
            self._answer(401, ApiError(401, "Invalid API Key provided.").body)
            return
        fault = fake._take_fault(method, url.path)
        record.fault = fault.kind if fault else None
        if fault is not None and fault.kind == "500":
            record.status = 500
            self._answer(500, ApiError(500, "An unknown error occurred", type_="api_error").body)
            return
        if fault is not None and fault.kind == "429":
            record.status = 429
            error = ApiError(
                429, "Too many requests hit the API too quickly.", code="rate_limit"
            ).body
            self._answer(429, error, headers={"Retry-After": str(fault.retry_after)})
            return
        status, answer, replayed = fake.handle(method, url.path, params, key)
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
