"""The hostile-input suite against a real server with the production settings: gunicorn with
`BILLING_ENV=production` (static files collected, as the deploy guide says), reached the way
its TLS proxy reaches it (`X-Forwarded-Proto: https`, the public host name), on the test
PostgreSQL database. Every case of cases.py gets its status, never a 5xx, and no table changes
but the attempt a failed login records. Browsers' CSRF token and Referer come with every
request, as a browser sends them.

Where gunicorn itself refuses a request before the application sees it (a request line over
4094 bytes: 414; a header line over 8190 bytes: 431; a malformed Content-Length: 400), that is
the status expected.

Whole bodies, through a raw socket: a body shorter than its Content-Length (the client stops
sending and closes its side) stores nothing and is 400; a chunked body is 411; a declared
length over the limit is 413 at once, before the body is sent.
"""

from __future__ import annotations

import http.client
import io
import json
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from metering.models import UsageEvent
from tests.e2e.processes import ROOT, service_env, start_gunicorn, stop
from tests.metering.helpers import make_event
from tests.security.hostile.cases import CASES, Case
from tests.security.hostile.world import (
    HOST,
    World,
    build_world,
    changed_tables,
    table_counts,
    world_values,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SECRET_KEY = secrets.token_urlsafe(48)
CSRF_SECRET = "A" * 32  # an unmasked CSRF secret, sent as the cookie and the header
LIMIT = 1024 * 1024
MAX_REQUEST_LINE = 4094  # gunicorn's --limit-request-line default
MAX_HEADER_LINE = 8190  # gunicorn's --limit-request-field_size default


@pytest.fixture
def production_server(tmp_path: Path, settings):
    """(World, host, port): the world committed, then gunicorn with the production settings."""
    settings.SECRET_KEY = SECRET_KEY  # sessions and password hashes signed as the server signs
    world = build_world()
    env = service_env(
        BILLING_ENV="production",
        SECRET_KEY=SECRET_KEY,
        ALLOWED_HOSTS=f"{HOST},127.0.0.1",  # the health probe asks by address
        BILLING_VAR_DIR=str(tmp_path / "var"),
        BILLING_RATE_LIMIT_EVENTS="off",
        BILLING_RATE_LIMIT_READS="off",
        BILLING_RATE_LIMIT_WRITES="off",
        BILLING_LOGIN_FAILURE_LIMIT="100000",  # every failed login is a case, not a lockout
        DEBUG="false",
    )
    for name in ("CACHE_URL", "REDIS_URL", "CELERY_BROKER_URL", "EMAIL_BACKEND", "ANYMAIL"):
        env.pop(name, None)
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--no-input", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=600,
    )
    process, url = start_gunicorn(env=env, log=tmp_path / "gunicorn.log", workers=1)
    try:
        yield world, urlsplit(url).hostname, urlsplit(url).port
    finally:
        stop(process)


def header_name(meta: str) -> str:
    return meta.removeprefix("HTTP_").replace("_", "-").title()


def request_headers(world: World, case: Case) -> dict[str, str]:
    cookies = [f"csrftoken={CSRF_SECRET}"]
    headers = {
        "Host": HOST,
        "X-Forwarded-Proto": "https",
        "Referer": f"https://{HOST}/",
        "X-CSRFToken": CSRF_SECRET,
        "Content-Type": case.content_type,
    }
    client = world.clients[case.role]
    if "HTTP_AUTHORIZATION" in client.defaults:
        headers["Authorization"] = client.defaults["HTTP_AUTHORIZATION"]
    if "sessionid" in client.cookies:
        cookies.append(f"sessionid={client.cookies['sessionid'].value}")
    for meta, value in case.headers.items():
        if meta == "HTTP_COOKIE":
            cookies.append(value)
        else:
            headers[header_name(meta)] = value
    headers["Cookie"] = "; ".join(cookies)
    return headers


def expected_status(case: Case, url: str, headers: dict[str, str]) -> int:
    """The case's status, or gunicorn's own refusal of what it does not pass on."""
    if len(f"{case.method} {url} HTTP/1.1".encode()) > MAX_REQUEST_LINE:
        return 414
    if any(len(f"{k}: {v}".encode()) > MAX_HEADER_LINE for k, v in headers.items()):
        return 431
    length = headers.get("Content-Length")
    if length is not None and not length.isdigit():
        return 400
    return case.status


def replay(host: str, port: int, case: Case, url: str, body: bytes, headers: dict[str, str]):
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        chunked = headers.get("Transfer-Encoding") == "chunked"
        connection.putrequest(case.method, url, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value.encode())
        if not chunked and "Content-Length" not in headers:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        try:
            if chunked:
                chunk = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
                connection.send(chunk + b"0\r\n\r\n")
            elif body:
                connection.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the body was read (413) and closed: the answer is waiting
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_every_hostile_case_against_the_production_settings(production_server):
    world, host, port = production_server
    values = world_values(world)
    mismatches, fives = [], 0
    for case in CASES:
        url, body = case.url(values), case.payload(values)
        headers = request_headers(world, case)
        if "CONTENT_LENGTH" in case.headers:
            headers["Content-Length"] = case.headers["CONTENT_LENGTH"]
        expected = expected_status(case, url, headers)
        before = table_counts()
        status = replay(host, port, case, url, body, headers)
        changes = {n: new - old for n, (old, new) in changed_tables(before, table_counts()).items()}
        fives += status >= 500
        # A failed login adds its attempt row once per username and address: the pair may
        # already be there from an earlier case (each in-process case starts afresh).
        allowed = case.changes if expected == case.status else {}
        unwanted = {n: d for n, d in changes.items() if not 0 < d <= allowed.get(n, 0)}
        if status != expected or unwanted:
            mismatches.append(f"{case.area}-{case.id}: {status} (expected {expected}) {changes}")

    print(f"{len(CASES)} cases against gunicorn with the production settings: {fives} 5xx")
    assert fives == 0
    assert mismatches == [], "\n".join(mismatches)


# --- Whole bodies, through a raw socket ---------------------------------------------------------


def raw_request(host: str, port: int, head: bytes, body: bytes, *, close: bool) -> bytes:
    """Send the head and the body, half-close if asked (the client stops sending), and read
    the whole answer."""
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head + body)
        if close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def head(path: str, *, key: str, length: int | None = None, chunked: bool = False) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {HOST}",
        "X-Forwarded-Proto: https",
        f"Authorization: Bearer {key}",
        "Content-Type: application/json",
        "Connection: close",
    ]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class _Answer:
    """The bytes a server sent, as the socket http.client reads a response from."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def status_and_json(answer: bytes) -> tuple[int, dict]:
    response = http.client.HTTPResponse(_Answer(answer))  # type: ignore[arg-type]
    response.begin()
    return response.status, json.loads(response.read())


def batch_of(count: int) -> bytes:
    return json.dumps({"events": [make_event(event_id=f"raw-{i}") for i in range(count)]}).encode()


@pytest.mark.parametrize("sent", ["all-but-declared-more", "half", "nothing"])
def test_a_body_shorter_than_its_content_length_stores_nothing(production_server, sent):
    world, host, port = production_server
    body = batch_of(20)  # whole JSON: only the declared length says something is missing
    part = {"all-but-declared-more": body, "half": body[: len(body) // 2], "nothing": b""}[sent]
    before = table_counts()

    answer = raw_request(
        host,
        port,
        head("/api/v1/events", key=world.service_key[1], length=len(body) + 100),
        part,
        close=True,
    )

    status, payload = status_and_json(answer)
    assert status == 400
    assert payload == {
        "errors": [
            {
                "index": None,
                "field": None,
                "message": (f"the body ended before its Content-Length of {len(body) + 100} bytes"),
            }
        ]
    }
    assert table_counts() == before
    assert not UsageEvent.objects.filter(event_id__startswith="raw-").exists()


def test_the_same_body_whole_is_stored(production_server):
    world, host, port = production_server
    body = batch_of(20)

    answer = raw_request(
        host,
        port,
        head("/api/v1/events", key=world.service_key[1], length=len(body)),
        body,
        close=False,
    )

    status, payload = status_and_json(answer)
    assert (status, payload["accepted"]) == (202, 20)
    assert UsageEvent.objects.filter(event_id__startswith="raw-").count() == 20


def test_a_chunked_body_is_411_and_stores_nothing(production_server):
    world, host, port = production_server
    body = batch_of(3)
    chunks = (
        b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:100], body[100:])) + b"0\r\n\r\n"
    )
    before = table_counts()

    answer = raw_request(
        host,
        port,
        head("/api/v1/events", key=world.service_key[1], chunked=True),
        chunks,
        close=False,
    )

    status, payload = status_and_json(answer)
    assert status == 411
    assert payload["errors"][0]["message"] == (
        "send the body with a Content-Length (chunked bodies are refused)"
    )
    assert table_counts() == before


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v1/customers", "/api/v1/plans"])
def test_an_oversized_declared_length_is_413_before_the_body_is_sent(production_server, path):
    world, host, port = production_server

    answer = raw_request(
        host, port, head(path, key=world.service_key[1], length=10 * LIMIT), b"", close=False
    )

    status, payload = status_and_json(answer)
    assert status == 413
    assert payload == {
        "errors": [{"index": None, "field": None, "message": f"body must be at most {LIMIT} bytes"}]
    }
