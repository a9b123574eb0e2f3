"""The hostile-input cases: one request each, with the exact status it must get.

Each case names the caller (`anonymous`, `key` a service-wide API key, `acme_key` a key scoped
to acme, `portal` acme's portal login, `staff` a finance superuser), the request, the status,
and the rows it may add (only failed logins, which django-axes records: that is its job).
Every other table must keep its row count. Paths and bodies may name the world's objects with
`{invoice}`, `{period}`, `{globex_period}`, `{customer_pk}`, `{cap}`, `{key_pk}`, `{staff_pk}`.

The API's ingestion endpoint has its own 93 cases (tests/metering/test_ingest_validation.py);
the ones here are about everything else, and about the hostile kinds of input as a class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
FAILED_LOGIN = {"axes_accessattempt": 1}  # one attempt row for the (username, address) pair

NUL = "\x00"
LONG = "x" * 10_000
HUGE = "9" * 40
UNICODE = "é漢字😀\u202e\ufeff"


@dataclass(frozen=True)
class Case:
    id: str
    role: str
    method: str
    path: str
    status: int
    body: Any = b""
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)
    changes: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # the API error message expected (first error), if any
    area: str = ""

    def payload(self, values: dict[str, Any]) -> bytes:
        body = self.body
        if isinstance(body, dict) and self.content_type == FORM:
            filled = {k: fill(v, values) if isinstance(v, str) else v for k, v in body.items()}
            return urlencode(filled, doseq=True).encode()
        elif not isinstance(body, bytes | str):
            body = json.dumps(body)
        return fill(body, values).encode() if isinstance(body, str) else body

    def url(self, values: dict[str, Any]) -> str:
        return fill(self.path, values)


def fill(text: str, values: dict[str, Any]) -> str:
    """The world's ids in place of `{name}` (no other braces are touched)."""
    for name, value in values.items():
        text = text.replace("{" + name + "}", str(value))
    return text


def js(value: Any) -> bytes:
    return json.dumps(value).encode()


def q(**params: str) -> str:
    return "?" + urlencode(params)


def _area(area: str, cases: list[Case]) -> list[Case]:
    return [Case(**{**c.__dict__, "area": area}) for c in cases]


CUSTOMER_ROUTES = ["usage", "invoices", "allowance", "budget", "budget/acknowledge"]
GET_ROUTES = ["usage", "invoices", "allowance", "budget"]

# --- API -------------------------------------------------------------------------------------

API: list[Case] = []
# NUL bytes anywhere in a customer id: a JSON 404 before any query, on every customers/ route.
for route in CUSTOMER_ROUTES:
    method = "POST" if route.endswith("acknowledge") else "GET"
    for name, segment in [("suffix", "globex%00"), ("alone", "%00"), ("inside", "ac%00me")]:
        API.append(
            Case(
                f"nul-{name}-{route}",
                "key",
                method,
                f"/api/v1/customers/{segment}/{route}",
                404,
                error="not found",
            )
        )
# Ids that are no customer: 404 with the API's body; another customer's: 404 for a scoped key.
for route in GET_ROUTES:
    for name, segment in [
        ("long", "a" * 3000),
        ("unicode", quote(UNICODE)),
        ("dots", "..%2Facme"),
        ("sql", quote("acme' OR '1'='1")),
        ("control", "%01%1f"),
        ("trailing-slash", "acme%2F"),
    ]:
        API.append(
            Case(
                f"{name}-{route}",
                "key",
                "GET",
                f"/api/v1/customers/{segment}/{route}",
                404,
                error="unknown customer",
            )
        )
    API.append(
        Case(
            f"other-customer-{route}",
            "acme_key",
            "GET",
            f"/api/v1/customers/globex/{route}",
            404,
            error="unknown customer",
        )
    )
    API.append(
        Case(
            f"nul-query-{route}",
            "key",
            "GET",
            f"/api/v1/customers/acme/{route}?x=%00",
            400,
            error="a query parameter contains a NUL byte",
        )
    )
    API.append(
        Case(
            f"anonymous-{route}",
            "anonymous",
            "GET",
            f"/api/v1/customers/acme/{route}",
            401,
            error="missing, invalid, revoked or expired API key",
        )
    )
API += [
    Case(
        "nul-query-meters",
        "key",
        "GET",
        "/api/v1/meters?%00=1",
        400,
        error="a query parameter contains a NUL byte",
    ),
    Case("nul-path-meters", "key", "GET", "/api/v1/meters%00", 404, error="not found"),
    Case("meters-delete", "key", "DELETE", "/api/v1/meters", 405),
    Case("meters-post", "key", "POST", "/api/v1/meters", 405, body={}),
    Case("events-get", "key", "GET", "/api/v1/events", 405),
    Case("customers-get", "key", "GET", "/api/v1/customers", 405),
    Case("plans-put", "key", "PUT", "/api/v1/plans", 405, body={}),
    Case("usage-post", "key", "POST", "/api/v1/customers/acme/usage", 405, body={}),
    Case("budget-delete", "key", "DELETE", "/api/v1/customers/acme/budget", 405),
    Case("acknowledge-get", "key", "GET", "/api/v1/customers/acme/budget/acknowledge", 405),
]
# The Authorization header.
for name, value, status in [
    ("bearer-long", "Bearer " + "A" * 10_000, 401),
    ("bearer-unicode", "Bearer " + UNICODE, 401),
    ("bearer-empty", "Bearer ", 401),
    ("basic", "Basic YWNtZTpwYXNzd29yZA==", 401),
    ("token-no-scheme", "mk_AAAAAAAA_" + "B" * 40, 401),
    ("bearer-nul", "Bearer mk_\x00", 400),
    ("bearer-twice", "Bearer a Bearer b", 401),
]:
    API.append(
        Case(
            f"auth-{name}",
            "anonymous",
            "GET",
            "/api/v1/meters",
            status,
            headers={"HTTP_AUTHORIZATION": value},
        )
    )
# Bodies of every shape for the endpoints that take one (events has its own 93 cases).
SHAPES = [
    ("array", b"[]"),
    ("string", b'"x"'),
    ("null", b"null"),
    ("number", b"12"),
    ("true", b"true"),
]
for name, body in SHAPES:
    API.append(Case(f"customers-{name}", "key", "POST", "/api/v1/customers", 422, body=body))
    API.append(Case(f"plans-{name}", "key", "POST", "/api/v1/plans", 422, body=body))
    API.append(
        Case(f"budget-{name}", "key", "PUT", "/api/v1/customers/acme/budget", 422, body=body)
    )
for name, body in [
    ("not-json", b"{not json"),
    ("truncated", b'{"customer_id": "acme"'),
    ("nan", b'{"customer_id": NaN}'),
    ("deep", b"[" * 100_000 + b"]" * 100_000),
    ("not-utf8", b'{"customer_id": "\xff\xfe"}'),
    ("empty", b""),
]:
    status = 422 if name == "empty" else 400
    API.append(Case(f"customers-{name}", "key", "POST", "/api/v1/customers", status, body=body))
    API.append(Case(f"plans-{name}", "key", "POST", "/api/v1/plans", status, body=body))
    API.append(
        Case(f"budget-{name}", "key", "PUT", "/api/v1/customers/acme/budget", status, body=body)
    )
API += [
    Case(
        "customers-form-encoded",
        "key",
        "POST",
        "/api/v1/customers",
        415,
        body="customer_id=x",
        content_type=FORM,
    ),
    Case(
        "customers-text",
        "key",
        "POST",
        "/api/v1/customers",
        415,
        body="x",
        content_type="text/plain",
    ),
    Case(
        "customers-scoped-key",
        "acme_key",
        "POST",
        "/api/v1/customers",
        403,
        body={"customer_id": "new"},
    ),
    Case(
        "customers-anonymous",
        "anonymous",
        "POST",
        "/api/v1/customers",
        401,
        body={"customer_id": "new"},
    ),
    Case("plans-scoped-key", "acme_key", "POST", "/api/v1/plans", 403, body={}),
]
NEW = {"customer_id": "initech", "name": "Initech"}
for name, overrides in [
    ("id-too-long", {"customer_id": "c" * 129}),
    ("id-nul", {"customer_id": "ini\x00tech"}),
    ("id-unicode", {"customer_id": UNICODE}),
    ("id-space", {"customer_id": "ini tech"}),
    ("id-empty", {"customer_id": ""}),
    ("id-list", {"customer_id": ["initech"]}),
    ("id-missing", {"customer_id": ...}),
    ("name-too-long", {"name": "n" * 201}),
    ("name-nul", {"name": "Ini\x00tech"}),
    ("name-object", {"name": {"a": 1}}),
    ("emails-not-list", {"emails": "a@b.example"}),
    ("emails-21", {"emails": [f"a{i}@b.example" for i in range(21)]}),
    ("emails-bad", {"emails": ["not an address"]}),
    ("emails-nul", {"emails": ["a\x00@b.example"]}),
    ("emails-too-long", {"emails": ["a" * 250 + "@b.example"]}),
    ("currency-unknown", {"currency": "XXX"}),
    ("currency-long", {"currency": LONG}),
    ("currency-lower", {"currency": "usd"}),
    ("timezone-unknown", {"timezone": "Mars/Olympus"}),
    ("timezone-long", {"timezone": "Europe/" + LONG}),
    ("timezone-nul", {"timezone": "UTC\x00"}),
    ("timezone-path", {"timezone": "../../etc/passwd"}),
    ("plan-unknown", {"plan": "nope"}),
    ("plan-nul", {"plan": "p\x00"}),
    ("plan-long", {"plan": "p" * 65}),
]:
    body = {k: v for k, v in {**NEW, **overrides}.items() if v is not ...}
    API.append(Case(f"customer-{name}", "key", "POST", "/api/v1/customers", 422, body=body))

PLAN = {"code": "hostile", "name": "Hostile", "currency": "USD", "interval": "month"}
PRICE = {"meter": "agent_tasks", "model": "per_unit", "unit_amount_minor": "5"}
for name, overrides in [
    ("code-nul", {"code": "a\x00"}),
    ("code-long", {"code": "c" * 65}),
    ("code-unicode", {"code": UNICODE}),
    ("name-long", {"name": "n" * 201}),
    ("currency-unknown", {"currency": "XXX"}),
    ("interval-year", {"interval": "year"}),
    ("prices-object", {"prices": {"a": 1}}),
    ("prices-101", {"prices": [PRICE] * 101}),
    ("price-not-object", {"prices": ["x"]}),
    ("meter-unknown", {"prices": [{**PRICE, "meter": "nope"}]}),
    ("meter-nul", {"prices": [{**PRICE, "meter": "agent\x00tasks"}]}),
    ("meter-twice", {"prices": [PRICE, PRICE]}),
    ("model-unknown", {"prices": [{**PRICE, "model": "free"}]}),
    ("unit-amount-huge", {"prices": [{**PRICE, "unit_amount_minor": "1e400"}]}),
    ("unit-amount-digits", {"prices": [{**PRICE, "unit_amount_minor": "9" * 40}]}),
    ("unit-amount-nan", {"prices": [{**PRICE, "unit_amount_minor": "NaN"}]}),
    ("unit-amount-negative", {"prices": [{**PRICE, "unit_amount_minor": "-1"}]}),
    ("unit-amount-places", {"prices": [{**PRICE, "unit_amount_minor": "0." + "1" * 13}]}),
    ("minimum-huge", {"prices": [{**PRICE, "minimum_minor": 10**30}]}),
    ("minimum-float", {"prices": [{**PRICE, "minimum_minor": 1e308}]}),
    ("minimum-negative", {"prices": [{**PRICE, "minimum_minor": -1}]}),
    ("included-huge", {"prices": [{**PRICE, "included_quantity": "1e30"}]}),
    (
        "package-huge",
        {
            "prices": [
                {
                    "meter": "agent_minutes",
                    "model": "package",
                    "package_size": "60",
                    "package_amount_minor": 10**30,
                }
            ]
        },
    ),
    (
        "package-size-zero",
        {
            "prices": [
                {
                    "meter": "agent_minutes",
                    "model": "package",
                    "package_size": "0",
                    "package_amount_minor": 150,
                }
            ]
        },
    ),
    (
        "tiers-not-list",
        {"prices": [{"meter": "llm_tokens", "model": "graduated", "tiers": "x"}]},
    ),
    (
        "tier-flat-huge",
        {
            "prices": [
                {
                    "meter": "llm_tokens",
                    "model": "graduated",
                    "tiers": [
                        {"up_to": None, "unit_amount_minor": "1", "flat_amount_minor": 10**30}
                    ],
                }
            ]
        },
    ),
    (
        "tier-up-to-huge",
        {
            "prices": [
                {
                    "meter": "llm_tokens",
                    "model": "graduated",
                    "tiers": [
                        {"up_to": "1e30", "unit_amount_minor": "1"},
                        {"up_to": None, "unit_amount_minor": "1"},
                    ],
                }
            ]
        },
    ),
]:
    body = {**PLAN, "prices": [PRICE], **overrides}
    API.append(Case(f"plan-{name}", "key", "POST", "/api/v1/plans", 422, body=body))

BUDGET = {"cap_minor": 50_000, "thresholds": [50, 80, 100], "action": "pause"}
for name, overrides in [
    ("cap-huge", {"cap_minor": 10**16}),
    ("cap-bigger-than-bigint", {"cap_minor": 10**30}),
    ("cap-float", {"cap_minor": 1.5}),
    ("cap-overflow-float", {"cap_minor": 1e308}),
    ("cap-string", {"cap_minor": "50000"}),
    ("cap-bool", {"cap_minor": True}),
    ("cap-zero", {"cap_minor": 0}),
    ("cap-negative", {"cap_minor": -1}),
    ("cap-list", {"cap_minor": [1]}),
    ("thresholds-zero", {"thresholds": [0]}),
    ("thresholds-over-100", {"thresholds": [101]}),
    ("thresholds-strings", {"thresholds": ["50"]}),
    ("thresholds-11", {"thresholds": list(range(1, 12))}),
    ("thresholds-duplicate", {"thresholds": [50, 50]}),
    ("thresholds-nested", {"thresholds": [[50]]}),
    ("thresholds-empty", {"thresholds": []}),
    ("thresholds-huge", {"thresholds": [10**30]}),
    ("action-unknown", {"action": "explode"}),
    ("action-nul", {"action": "pause\x00"}),
    ("action-long", {"action": LONG}),
    ("cap-missing", {"cap_minor": ...}),
]:
    body = {k: v for k, v in {**BUDGET, **overrides}.items() if v is not ...}
    API.append(
        Case(f"budget-{name}", "key", "PUT", "/api/v1/customers/acme/budget", 422, body=body)
    )
API += [
    Case(
        "budget-other-customer",
        "acme_key",
        "PUT",
        "/api/v1/customers/globex/budget",
        404,
        body=BUDGET,
        error="unknown customer",
    ),
    Case(
        "acknowledge-nothing-paused",
        "key",
        "POST",
        "/api/v1/customers/acme/budget/acknowledge",
        409,
        body=b"[]",
    ),
    Case(
        "acknowledge-garbage-body",
        "key",
        "POST",
        "/api/v1/customers/acme/budget/acknowledge",
        409,
        body=b"\xff" * 100,
    ),
    Case(
        "acknowledge-other-customer",
        "acme_key",
        "POST",
        "/api/v1/customers/globex/budget/acknowledge",
        404,
        error="unknown customer",
    ),
]
# Whole bodies only: the length must be known, a number, and within the limit.
for method, path in [
    ("POST", "/api/v1/events"),
    ("POST", "/api/v1/customers"),
    ("POST", "/api/v1/plans"),
    ("PUT", "/api/v1/customers/acme/budget"),
]:
    slug = path.rsplit("/", 1)[-1]
    API += [
        Case(
            f"chunked-{slug}",
            "key",
            method,
            path,
            411,
            body=b"{}",
            headers={"HTTP_TRANSFER_ENCODING": "chunked"},
            error="send the body with a Content-Length (chunked bodies are refused)",
        ),
        Case(
            f"length-not-a-number-{slug}",
            "key",
            method,
            path,
            400,
            headers={"CONTENT_LENGTH": "ten"},
            error="Content-Length must be a number of bytes",
        ),
        Case(
            f"oversized-{slug}",
            "key",
            method,
            path,
            413,
            body=b'{"pad": "' + b"x" * (1024 * 1024) + b'"}',
            error="body must be at most 1048576 bytes",
        ),
    ]
# NUL bytes inside JSON strings of an event (ingestion validates them like any other value).
EVENT = {
    "event_id": "hostile-1",
    "customer_id": "acme",
    "meter": "llm_tokens",
    "quantity": 1,
    "timestamp": "{timestamp}",
    "properties": {},
}
for name, overrides in [
    ("event-id-nul", {"event_id": "evt\x00"}),
    ("customer-nul", {"customer_id": "acme\x00"}),
    ("meter-nul", {"meter": "llm\x00tokens"}),
    ("quantity-nul", {"quantity": "1\x00"}),
    ("timestamp-nul", {"timestamp": "2026-01-01T00:00:00Z\x00"}),
    ("property-value-nul", {"properties": {"agent_id": "a\x00"}}),
    ("property-key-nul", {"properties": {"a\x00": "1"}}),
    ("timestamp-year-9999", {"timestamp": "9999-12-31T23:59:59Z"}),
    ("timestamp-year-0001", {"timestamp": "0001-01-01T00:00:00Z"}),
    ("timestamp-offset-huge", {"timestamp": "2026-01-01T00:00:00+99:00"}),
]:
    body = json.dumps({**EVENT, **overrides})
    API.append(Case(f"event-{name}", "key", "POST", "/api/v1/events", 422, body=body))

# --- Portal ----------------------------------------------------------------------------------

LOGIN = "/portal/login/"
PORTAL: list[Case] = [
    Case(
        "login-username-10000",
        "anonymous",
        "POST",
        LOGIN,
        200,
        content_type=FORM,
        body={"username": LONG, "password": "x"},
    ),
    Case(
        "login-username-151",
        "anonymous",
        "POST",
        LOGIN,
        200,
        content_type=FORM,
        body={"username": "u" * 151, "password": "x"},
    ),
    Case(
        "login-username-256",
        "anonymous",
        "POST",
        LOGIN,
        200,
        content_type=FORM,
        body={"username": "u" * 256, "password": "x"},
    ),
    Case(
        "login-username-nul",
        "anonymous",
        "POST",
        LOGIN,
        200,
        content_type=FORM,
        body={"username": "acme\x00user", "password": "x"},
    ),
    Case(
        "login-username-unicode",
        "anonymous",
        "POST",
        LOGIN,
        200,
        content_type=FORM,
        body={"username": UNICODE, "password": "x"},
        changes=FAILED_LOGIN,
    ),
    Case(
        "login-password-10000",
        "anonymous",
        "POST",
        LOGIN,
        200,
        content_type=FORM,
        body={"username": "acme-user", "password": LONG},
        changes=FAILED_LOGIN,
    ),
    Case(
        "login-password-nul",
        "anonymous",
        "POST",
        LOGIN,
        200,
        content_type=FORM,
        body={"username": "acme-user", "password": "x\x00"},
    ),
    Case(
        "login-lists",
        "anonymous",
        "POST",
        LOGIN,
        200,
        content_type=FORM,
        body={"username": ["a", "b"], "password": ["c", "d"]},
        changes=FAILED_LOGIN,
    ),
    Case("login-empty", "anonymous", "POST", LOGIN, 200, content_type=FORM, body={}),
    Case("login-json", "anonymous", "POST", LOGIN, 200, body={"username": "acme-user"}),
    Case("login-next-nul", "anonymous", "GET", LOGIN + "?next=%00", 400),
    Case("login-next-long", "anonymous", "GET", LOGIN + q(next="/" + LONG), 200),
    Case(
        "login-next-offsite",
        "anonymous",
        "POST",
        LOGIN + q(next="https://evil.example/"),
        200,
        content_type=FORM,
        body={"username": "acme-user", "password": "x"},
        changes=FAILED_LOGIN,
    ),
    Case(
        "login-user-agent-long",
        "anonymous",
        "POST",
        LOGIN,
        200,
        content_type=FORM,
        body={"username": "acme-user", "password": "x"},
        headers={"HTTP_USER_AGENT": LONG},
        changes=FAILED_LOGIN,
    ),
    Case(
        "login-forwarded-for",
        "anonymous",
        "POST",
        LOGIN,
        200,
        content_type=FORM,
        body={"username": "acme-user", "password": "x"},
        headers={"HTTP_X_FORWARDED_FOR": "not-an-ip, " + LONG},
        changes=FAILED_LOGIN,
    ),
    Case(
        "login-nul-cookie",
        "anonymous",
        "GET",
        LOGIN,
        200,
        headers={"HTTP_COOKIE": 'sessionid="abcdefgh\\000ijkl"; csrftoken="a\\000"'},
    ),
    Case(
        "password-reset-email-long",
        "anonymous",
        "POST",
        "/portal/password-reset/",
        200,
        content_type=FORM,
        body={"email": "a" * 10_000 + "@b.example"},
    ),
    Case(
        "password-reset-email-nul",
        "anonymous",
        "POST",
        "/portal/password-reset/",
        200,
        content_type=FORM,
        body={"email": "acme\x00@b.example"},
    ),
    Case(
        "password-reset-email-unicode",
        "anonymous",
        "POST",
        "/portal/password-reset/",
        200,
        content_type=FORM,
        body={"email": "é@漢字.example"},
    ),
    Case(
        "password-reset-unknown",
        "anonymous",
        "POST",
        "/portal/password-reset/",
        302,
        content_type=FORM,
        body={"email": "nobody@nowhere.example"},
    ),
    Case(
        "password-reset-confirm-huge-uid",
        "anonymous",
        "GET",
        "/portal/password-reset/OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5/set-password/",
        200,
    ),
    Case(
        "password-reset-confirm-bad-base64",
        "anonymous",
        "GET",
        "/portal/password-reset/%25%25%25/abc-def/",
        200,
    ),
    Case(
        "password-reset-confirm-long-token",
        "anonymous",
        "GET",
        f"/portal/password-reset/MQ/{'t' * 3000}/",
        200,
    ),
    Case(
        "password-reset-confirm-unicode",
        "anonymous",
        "GET",
        f"/portal/password-reset/{quote(UNICODE)}/{quote(UNICODE)}/",
        200,
    ),
]
EXPORT = "/portal/export/"
for name, query, status in [
    ("max-date", q(start="9999-12-31", end="9999-12-31"), 400),
    ("end-max-date", q(start="2026-01-01", end="9999-12-31"), 400),
    ("min-date", q(start="0001-01-01", end="0001-01-02"), 400),
    ("year-10000", q(start="10000-01-01", end="10000-01-02"), 400),
    ("not-a-date", q(start="2026-02-30", end="2026-03-01"), 400),
    ("reversed", q(start="2026-03-01", end="2026-02-01"), 400),
    ("long", q(start=LONG, end=LONG), 400),
    ("unicode", q(start=UNICODE, end=UNICODE), 400),
    ("nul", "?start=2026-01-01%00&end=2026-01-02", 400),
    ("start-only", q(start="2026-01-01"), 400),
    ("period-huge", q(period=HUGE), 400),
    ("period-bigint-plus-one", q(period=str(2**63)), 400),
    ("period-negative", q(period="-1"), 400),
    ("period-zero", q(period="0"), 400),
    ("period-float", q(period="1.5"), 400),
    ("period-text", q(period="abc"), 400),
    ("period-biggest-id", q(period=str(2**63 - 1)), 404),
    ("period-other-customer", "?period={globex_period}", 404),
    ("period-list", "?period={period}&period=-1", 400),
]:
    PORTAL.append(Case(f"export-{name}", "portal", "GET", EXPORT + query, status))
for name, query, status in [
    ("days-huge", q(days=HUGE), 200),
    ("days-negative", q(days="-7"), 200),
    ("days-text", q(days="week"), 200),
    ("property-long", q(property=LONG), 200),
    ("property-unicode", q(property=UNICODE), 200),
    ("property-sql", q(property="x' OR 1=1 --"), 200),
    ("property-nul", "?property=agent%00id", 400),
    ("property-huge-number", q(property=HUGE), 200),  # read as an array index: refused
    ("property-negative", q(property="-" + HUGE), 200),
    ("property-number", q(property="5_0"), 200),
    ("everything", q(days=HUGE, property=LONG, fragment=LONG), 200),
]:
    PORTAL.append(Case(f"dashboard-{name}", "portal", "GET", "/portal/" + query, status))
    PORTAL.append(Case(f"breakdown-{name}", "portal", "GET", "/portal/breakdown/" + query, status))
for name, path, status in [
    ("page-huge", "/portal/invoices/" + q(page=HUGE), 200),
    ("page-negative", "/portal/invoices/" + q(page="-1"), 200),
    ("page-text", "/portal/invoices/" + q(page="last"), 200),
    ("page-nul", "/portal/invoices/?page=%00", 400),
    ("invoice-huge", f"/portal/invoices/{HUGE}/", 404),
    ("invoice-bigint-plus-one", f"/portal/invoices/{2**63}/", 404),
    ("invoice-zero", "/portal/invoices/0/", 404),
    ("invoice-negative", "/portal/invoices/-1/", 404),
    ("invoice-text", "/portal/invoices/abc/", 404),
    ("invoice-nul", "/portal/invoices/%00/", 404),
    ("document-huge", f"/portal/invoices/{HUGE}/document/", 404),
    ("document-download-long", "/portal/invoices/{invoice}/document/" + q(download=LONG), 200),
]:
    PORTAL.append(Case(f"invoices-{name}", "portal", "GET", path, status))
BUDGET_FORM = {"cap": "500.00", "thresholds": "50, 80, 100", "action": "alert"}
for name, overrides in [
    ("cap-overflow", {"cap": "1e400"}),
    ("cap-digits", {"cap": "9" * 39}),
    ("cap-over-max", {"cap": "10000000000000.01"}),
    ("cap-long", {"cap": "1" * 41}),
    ("cap-negative", {"cap": "-5"}),
    ("cap-nan", {"cap": "NaN"}),
    ("cap-infinity", {"cap": "Infinity"}),
    ("cap-places", {"cap": "12.345"}),
    ("cap-nul", {"cap": "5\x00"}),
    ("thresholds-huge", {"thresholds": HUGE}),
    ("thresholds-long", {"thresholds": "5, " * 30}),
    ("thresholds-zero", {"thresholds": "0"}),
    ("thresholds-nul", {"thresholds": "50\x00"}),
    ("action-unknown", {"action": "explode"}),
    ("action-long", {"action": LONG}),
    ("nothing", {"cap": ..., "thresholds": ..., "action": ...}),
]:
    body = {k: v for k, v in {**BUDGET_FORM, **overrides}.items() if v is not ...}
    PORTAL.append(
        Case(
            f"budget-{name}", "portal", "POST", "/portal/budget/", 400, content_type=FORM, body=body
        )
    )
PORTAL += [
    Case("budget-json", "portal", "POST", "/portal/budget/", 400, body=BUDGET_FORM),
    Case(
        "acknowledge-nothing-paused",
        "portal",
        "POST",
        "/portal/budget/acknowledge/",
        302,
        content_type=FORM,
        body={"x": LONG},
    ),
    Case("acknowledge-get", "portal", "GET", "/portal/budget/acknowledge/", 405),
    Case("dashboard-anonymous", "anonymous", "GET", "/portal/" + q(days=HUGE), 302),
    Case("export-anonymous", "anonymous", "GET", EXPORT + q(start="9999-12-31"), 302),
    Case(
        "oversized-login",
        "anonymous",
        "POST",
        LOGIN,
        413,
        content_type=FORM,
        body=b"username=" + b"x" * (1024 * 1024),
    ),
    Case(
        "chunked-login",
        "anonymous",
        "POST",
        LOGIN,
        411,
        content_type=FORM,
        body=b"username=a",
        headers={"HTTP_TRANSFER_ENCODING": "chunked"},
    ),
    Case(
        "too-many-fields",
        "anonymous",
        "POST",
        LOGIN,
        400,
        content_type=FORM,
        body="&".join(f"f{i}=1" for i in range(1001)),
    ),
]

# --- Admin -----------------------------------------------------------------------------------

ADMIN_LOGIN = "/admin/login/"
ADMIN: list[Case] = [
    Case(
        "login-username-10000",
        "anonymous",
        "POST",
        ADMIN_LOGIN,
        200,
        content_type=FORM,
        body={"username": LONG, "password": "x"},
    ),
    Case(
        "login-username-256",
        "anonymous",
        "POST",
        ADMIN_LOGIN,
        200,
        content_type=FORM,
        body={"username": "u" * 256, "password": "x"},
    ),
    Case(
        "login-username-nul",
        "anonymous",
        "POST",
        ADMIN_LOGIN,
        200,
        content_type=FORM,
        body={"username": "fran\x00", "password": "x"},
    ),
    Case(
        "login-password-10000",
        "anonymous",
        "POST",
        ADMIN_LOGIN,
        200,
        content_type=FORM,
        body={"username": "fran", "password": LONG},
        changes=FAILED_LOGIN,
    ),
    Case("login-next-nul", "anonymous", "GET", ADMIN_LOGIN + "?next=%00", 400),
]
CHANGELISTS = {
    "customer": "metering/customer",
    "event": "metering/usageevent",
    "invoice": "invoicing/invoice",
    "audit": "audit/auditentry",
    "period": "invoicing/billingperiod",
    "aggregate": "metering/usageaggregate",
    "notification": "notifications/notification",
    "key": "metering/apikey",
}
for name, model in CHANGELISTS.items():
    base = f"/admin/{model}/"
    ADMIN += [
        Case(f"{name}-search-nul", "staff", "GET", base + "?q=%00", 400),
        Case(f"{name}-search-long", "staff", "GET", base + q(q=LONG), 200),
        Case(f"{name}-search-unicode", "staff", "GET", base + q(q=UNICODE), 200),
        Case(f"{name}-page-huge", "staff", "GET", base + q(p=HUGE), 200),
        Case(f"{name}-order-garbage", "staff", "GET", base + q(o="99.-x.abc"), 200),
        Case(f"{name}-unknown-filter", "staff", "GET", base + q(nope__exact="1"), 302),
        Case(f"{name}-object-nul", "staff", "GET", f"{base}%00/change/", 404),
        Case(f"{name}-object-huge", "staff", "GET", f"{base}{HUGE}/change/", 302),
        Case(f"{name}-object-text", "staff", "GET", f"{base}abc/change/", 302),
        Case(f"{name}-object-unicode", "staff", "GET", f"{base}{quote(UNICODE)}/change/", 302),
        Case(f"{name}-to-field-empty", "staff", "GET", base + "999999/change/?_to_field=", 302),
        Case(
            f"{name}-to-field-empty-delete",
            "staff",
            "GET",
            base + "999999/delete/?_to_field=",
            302 if name == "customer" else 403,  # the others may not be deleted at all
        ),
        Case(f"{name}-to-field-unknown", "staff", "GET", base + "1/change/?_to_field=nope", 400),
        Case(f"{name}-anonymous", "anonymous", "GET", base + q(q=LONG), 302),
    ]
for name, model, column in [
    ("event", "metering/usageevent", "timestamp"),
    ("audit", "audit/auditentry", "at"),
    ("period", "invoicing/billingperiod", "start"),
    ("aggregate", "metering/usageaggregate", "window_start"),
]:
    base = f"/admin/{model}/"
    ADMIN += [
        Case(
            f"{name}-hierarchy-last-day",
            "staff",
            "GET",
            base + f"?{column}__year=9999&{column}__month=12&{column}__day=31",
            302,
        ),
        Case(
            f"{name}-hierarchy-last-month",
            "staff",
            "GET",
            base + f"?{column}__year=9999&{column}__month=12",
            302,
        ),
        Case(f"{name}-hierarchy-last-year", "staff", "GET", base + f"?{column}__year=9999", 302),
        Case(
            f"{name}-hierarchy-year-9998",
            "staff",
            "GET",
            base + f"?{column}__year=9998&{column}__month=12",
            200,
        ),
        Case(f"{name}-hierarchy-year-huge", "staff", "GET", base + f"?{column}__year={HUGE}", 302),
        Case(
            f"{name}-hierarchy-month-13",
            "staff",
            "GET",
            base + f"?{column}__year=2026&{column}__month=13",
            302,
        ),
    ]
for name, query in [
    ("timestamp-gte-max", "?timestamp__gte=9999-12-31"),
    ("timestamp-gte-text", "?timestamp__gte=soon"),
    ("timestamp-lt-huge", f"?timestamp__lt={HUGE}"),
    ("meter-huge", f"?meter__id__exact={HUGE}"),
    ("meter-text", "?meter__id__exact=abc"),
]:
    ADMIN.append(
        Case(
            f"event-filter-{name}",
            "staff",
            "GET",
            "/admin/metering/usageevent/" + query,
            302 if name in {"timestamp-gte-text", "timestamp-lt-huge", "meter-text"} else 200,
        )
    )
CUSTOMER_FORM = {
    "external_id": "initech",
    "name": "Initech",
    "emails": '["a@b.example"]',
    "currency": "USD",
    "timezone": "UTC",
    "status": "active",
}
for name, overrides in [
    ("id-long", {"external_id": "c" * 129}),
    ("id-nul", {"external_id": "ini\x00tech"}),
    ("name-long", {"name": "n" * 201}),
    ("emails-not-json", {"emails": "[not json"}),
    ("emails-nul", {"emails": '["a\\u0000@b.example"]'}),
    ("emails-object", {"emails": '{"a": 1}'}),
    ("emails-huge-number", {"emails": "1e400"}),
    ("currency-unknown", {"currency": "XXX"}),
    ("timezone-unknown", {"timezone": "Mars/Olympus"}),
    ("timezone-long", {"timezone": LONG}),
    ("status-unknown", {"status": "evil"}),
]:
    ADMIN.append(
        Case(
            f"customer-add-{name}",
            "staff",
            "POST",
            "/admin/metering/customer/add/",
            200,
            content_type=FORM,
            body={**CUSTOMER_FORM, **overrides},
        )
    )
CAP_FORM = {"cap_minor": "5000", "thresholds": "[50, 80, 100]", "action": "alert"}
for name, overrides in [
    ("cap-huge", {"cap_minor": HUGE}),
    ("cap-negative", {"cap_minor": "-1"}),
    ("thresholds-nul", {"thresholds": '["\\u0000"]'}),
    ("thresholds-huge", {"thresholds": f"[{HUGE}]"}),
    ("thresholds-not-json", {"thresholds": "[50,"}),
    ("thresholds-object", {"thresholds": '{"a": 1}'}),
    ("action-long", {"action": LONG}),
]:
    ADMIN.append(
        Case(
            f"budget-cap-change-{name}",
            "staff",
            "POST",
            "/admin/budgets/budgetcap/{cap}/change/",
            200,
            content_type=FORM,
            body={**CAP_FORM, **overrides},
        )
    )
KEY_FORM = {"name": "new key", "customer": "", "expires_at_0": "", "expires_at_1": ""}
for name, overrides in [
    ("name-long", {"name": "k" * 201}),
    ("name-nul", {"name": "k\x00"}),
    ("customer-huge", {"customer": HUGE}),
    ("customer-text", {"customer": "acme"}),
    ("expires-year-9999", {"expires_at_0": "9999-12-31", "expires_at_1": "23:59:59"}),
    ("expires-year-10000", {"expires_at_0": "10000-01-01", "expires_at_1": "00:00:00"}),
    ("expires-bad-time", {"expires_at_0": "2026-01-01", "expires_at_1": "25:61:61"}),
]:
    status = 302 if name == "expires-year-9999" else 200
    # A key finance staff may create: the key, the admin's log and the audit log record it.
    changes = (
        {"metering_apikey": 1, "django_admin_log": 1, "invoicing_auditentry": 1}
        if status == 302
        else {}
    )
    ADMIN.append(
        Case(
            f"key-add-{name}",
            "staff",
            "POST",
            "/admin/metering/apikey/add/",
            status,
            content_type=FORM,
            body={**KEY_FORM, **overrides},
            changes=changes,
        )
    )
ADMIN += [
    Case(
        "void-reason-long",
        "staff",
        "POST",
        "/admin/invoicing/invoice/",
        200,
        content_type=FORM,
        body={
            "action": "void_invoices",
            "_selected_action": "{invoice}",
            "post": "yes",
            "reason": LONG,
        },
    ),
    Case(
        "action-unknown",
        "staff",
        "POST",
        "/admin/invoicing/invoice/",
        302,
        content_type=FORM,
        body={"action": "nope", "_selected_action": "{invoice}"},
    ),
    Case(
        "action-selected-huge",
        "staff",
        "POST",
        "/admin/metering/apikey/",
        302,
        content_type=FORM,
        body={"action": "revoke_keys", "_selected_action": HUGE},
    ),
    Case(
        "action-selected-text",
        "staff",
        "POST",
        "/admin/metering/apikey/",
        302,
        content_type=FORM,
        body={"action": "revoke_keys", "_selected_action": "abc"},
    ),
    Case("otp-config-missing", "staff", "GET", "/admin/otp_totp/totpdevice/9999/config/", 404),
    Case("otp-qrcode-missing", "staff", "GET", "/admin/otp_totp/totpdevice/9999/qrcode/", 404),
    Case("otp-config-huge", "staff", "GET", f"/admin/otp_totp/totpdevice/{HUGE}/config/", 404),
    Case("user-password-huge", "staff", "GET", f"/admin/auth/user/{HUGE}/password/", 404),
    Case("view-on-site-huge", "staff", "GET", f"/admin/r/{HUGE}/{HUGE}/", 404),
    Case("view-on-site-nul", "staff", "GET", "/admin/r/1/%00/", 404),
    Case("app-list-unknown", "staff", "GET", "/admin/nope/", 404),
    Case(
        "autocomplete-garbage",
        "staff",
        "GET",
        "/admin/autocomplete/"
        + q(app_label="metering", model_name="customer", field_name="x" * 300, term=LONG),
        403,
    ),
    Case(
        "invoice-document-huge", "staff", "GET", f"/admin/invoicing/invoice/{HUGE}/document/", 404
    ),
    Case("history-huge", "staff", "GET", f"/admin/metering/customer/{HUGE}/history/", 302),
    Case(
        "delete-huge",
        "staff",
        "POST",
        f"/admin/metering/customer/{HUGE}/delete/",
        302,
        content_type=FORM,
        body={"post": "yes"},
    ),
]

# --- Webhooks --------------------------------------------------------------------------------

WEBHOOKS: list[Case] = []
for provider in [
    "postmark",
    "sendgrid",
    "mailgun",
    "mailjet",
    "amazon_ses",
    "brevo",
    "sparkpost",
    "mandrill",
    "resend",
    "postal",
]:
    WEBHOOKS.append(
        Case(
            f"{provider}-tracking",
            "anonymous",
            "POST",
            f"/anymail/{provider}/tracking/",
            404,
            body={"RecordType": "Bounce", "MessageID": "m", "Email": "a@b.c"},
        )
    )
for provider in ["postmark", "sendgrid", "mailgun", "amazon_ses", "brevo"]:
    WEBHOOKS.append(
        Case(
            f"{provider}-inbound",
            "anonymous",
            "POST",
            f"/anymail/{provider}/inbound/",
            404,
            body={},
        )
    )
STRIPE = "/webhooks/stripe"
WEBHOOKS += [
    Case("stripe-unsigned", "anonymous", "POST", STRIPE, 400, body={"id": "evt_1"}),
    Case(
        "stripe-bad-signature",
        "anonymous",
        "POST",
        STRIPE,
        400,
        body={"id": "evt_1"},
        headers={"HTTP_STRIPE_SIGNATURE": "t=1,v1=forged"},
    ),
    Case(
        "stripe-signature-long",
        "anonymous",
        "POST",
        STRIPE,
        400,
        body={"id": "evt_1"},
        headers={"HTTP_STRIPE_SIGNATURE": "t=" + HUGE + ",v1=" + LONG},
    ),
    Case(
        "stripe-signature-nul",
        "anonymous",
        "POST",
        STRIPE,
        400,
        body={"id": "evt_1"},
        headers={"HTTP_STRIPE_SIGNATURE": "t=1\x00"},
    ),
    Case("stripe-get", "anonymous", "GET", STRIPE, 405),
    Case(
        "stripe-oversized",
        "anonymous",
        "POST",
        STRIPE,
        413,
        body=b'{"pad": "' + b"x" * (1024 * 1024) + b'"}',
    ),
    Case(
        "stripe-chunked",
        "anonymous",
        "POST",
        STRIPE,
        411,
        body=b"{}",
        headers={"HTTP_TRANSFER_ENCODING": "chunked"},
    ),
]

# --- Everything else -------------------------------------------------------------------------

OTHER: list[Case] = [
    Case("healthz-nul-query", "anonymous", "GET", "/healthz?x=%00", 400),
    Case("schema-nul-query", "anonymous", "GET", "/api/schema/?format=%00", 400),
    Case("schema-format-long", "anonymous", "GET", "/api/schema/" + q(format=LONG), 404),
    Case("docs-script-long", "anonymous", "GET", "/api/docs/" + q(script=LONG), 200),
    Case("home-nul", "anonymous", "GET", "/%00", 404),
    Case("unknown-long-path", "anonymous", "GET", "/" + "a" * 5000, 404),
    Case("unknown-unicode-path", "anonymous", "GET", "/" + quote(UNICODE), 404),
    Case("invalid-utf8-path", "anonymous", "GET", "/portal/%ff%fe/", 404),
    Case("static-traversal", "anonymous", "GET", "/static/..%2F..%2Fsettings.py", 404),
]

CASES: list[Case] = [
    *_area("api", API),
    *_area("portal", PORTAL),
    *_area("admin", ADMIN),
    *_area("webhooks", WEBHOOKS),
    *_area("other", OTHER),
]
assert len({(c.area, c.id) for c in CASES}) == len(CASES), "case ids must be unique"
