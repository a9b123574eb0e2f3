"""billing_project.request_guard: what no view sees. A NUL byte in the path (404), the query
string or a header (400) is refused before any query, a cookie with one is dropped; a body of
unknown length is 411, over the limit 413 (the API's JSON error on every API endpoint, a plain
page elsewhere), a Content-Length that is not a number 400; nothing is stored for any of them.
Bodies cut short are tested through a real server (tests/security/hostile/test_production.py)."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.metering.helpers import EVENTS_URL, make_event
from tests.security.hostile.world import build_world, table_counts

pytestmark = pytest.mark.django_db

LIMIT = 1024 * 1024


def api_error(message: str, field: str | None = None) -> dict:
    return {"errors": [{"index": None, "field": field, "message": message}]}


@pytest.fixture
def world():
    return build_world()


API_GETS = [
    "/api/v1/customers/globex%00/usage",
    "/api/v1/customers/%00/invoices",
    "/api/v1/customers/ac%00me/allowance",
    "/api/v1/customers/acme%00/budget",
    "/api/v1/meters%00",
]


@pytest.mark.parametrize("path", API_GETS)
def test_a_nul_in_an_api_path_is_a_json_404_before_any_query(world, path):
    with CaptureQueriesContext(connection) as queries:
        response = world.clients["key"].get(path)

    assert response.status_code == 404
    assert response.json() == api_error("not found")
    assert len(queries) == 0


@pytest.mark.parametrize(
    "path", ["/portal/invoices/%00/", "/portal%00/", "/admin/metering/customer/%00/change/"]
)
def test_a_nul_in_any_other_path_is_a_plain_404(world, path):
    response = world.clients["staff"].get(path)

    assert response.status_code == 404
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content == b"not found\n"


@pytest.mark.parametrize(
    ("role", "url"),
    [
        ("key", "/api/v1/customers/acme/usage?x=%00"),
        ("key", "/api/v1/meters?%00=1"),
        ("portal", "/portal/export/?start=2026-01-01%00&end=2026-01-02"),
        ("portal", "/portal/?property=agent%00id"),
        ("staff", "/admin/metering/customer/?q=%00"),
        ("staff", "/admin/metering/usageevent/?timestamp__gte=%00"),
    ],
)
def test_a_nul_in_the_query_string_is_400(world, role, url):
    with CaptureQueriesContext(connection) as queries:
        response = world.clients[role].get(url)

    assert response.status_code == 400
    if url.startswith("/api/"):
        assert response.json() == api_error("a query parameter contains a NUL byte", "query")
    else:
        assert response.content == b"a query parameter contains a NUL byte\n"
    assert len(queries) == 0


def test_a_nul_in_a_header_is_400(world):
    response = world.clients["anonymous"].get(
        "/api/v1/meters", HTTP_AUTHORIZATION="Bearer mk_\x00AAAA"
    )

    assert response.status_code == 400
    assert response.json() == api_error("a request header contains a NUL byte", "headers")


def test_a_session_cookie_with_a_nul_is_dropped_not_looked_up(world):
    client = world.clients["anonymous"]
    client.cookies["sessionid"] = "abcdefgh\x00ijkl"

    response = client.get("/portal/")

    assert response.status_code == 302
    assert response["Location"] == "/portal/login/?next=/portal/"


def test_a_chunked_body_is_411(world):
    before = table_counts()
    body = json.dumps(make_event()).encode()
    response = world.clients["key"].generic(
        "POST",
        EVENTS_URL,
        body,
        content_type="application/json",
        HTTP_TRANSFER_ENCODING="chunked",
    )

    assert response.status_code == 411
    assert response.json() == api_error(
        "send the body with a Content-Length (chunked bodies are refused)"
    )
    assert table_counts() == before


# Every API endpoint that takes a body, and two pages that do.
BODY_ENDPOINTS = [
    ("key", "POST", "/api/v1/events"),
    ("key", "POST", "/api/v1/customers"),
    ("key", "POST", "/api/v1/plans"),
    ("key", "PUT", "/api/v1/customers/acme/budget"),
    ("key", "POST", "/api/v1/customers/acme/budget/acknowledge"),
    ("key", "GET", "/api/v1/meters"),
    ("anonymous", "POST", "/api/v1/customers"),
]


@pytest.mark.parametrize(("role", "method", "path"), BODY_ENDPOINTS)
def test_every_api_endpoint_answers_an_oversized_body_with_the_json_413(world, role, method, path):
    before = table_counts()
    body = json.dumps({"customer_id": "acme", "name": "x" * LIMIT}).encode()

    response = world.clients[role].generic(method, path, body, content_type="application/json")

    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert response.json() == api_error(f"body must be at most {LIMIT} bytes")
    assert table_counts() == before


def test_a_body_of_exactly_the_limit_is_read(world):
    body = b'{"customer_id": "acme", "name": "' + b"x" * (LIMIT - 35) + b'"}'
    assert len(body) == LIMIT

    response = world.clients["key"].post("/api/v1/customers", body, content_type="application/json")

    assert response.status_code == 422  # read and validated: the name is too long


@pytest.mark.parametrize(
    ("role", "path"), [("anonymous", "/portal/login/"), ("portal", "/portal/budget/")]
)
def test_an_oversized_form_is_a_plain_413(world, role, path):
    before = table_counts()
    body = b"username=" + b"x" * LIMIT

    response = world.clients[role].generic(
        "POST", path, body, content_type="application/x-www-form-urlencoded"
    )

    assert response.status_code == 413
    assert response.content == f"body must be at most {LIMIT} bytes\n".encode()
    assert table_counts() == before


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", "١٢", "0x10"])
def test_a_content_length_that_is_not_a_number_is_400(world, length):
    before = table_counts()
    response = world.clients["key"].generic(
        "POST", EVENTS_URL, b"", content_type="application/json", CONTENT_LENGTH=length
    )

    assert response.status_code == 400
    assert response.json() == api_error("Content-Length must be a number of bytes")
    assert table_counts() == before
