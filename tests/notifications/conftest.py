"""Fixtures for notifications: a frozen clock, a tasks-only hourly plan, event posting through
the API, and a local HTTP server standing in for the operator's agent platform."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import time_machine

from invoicing.rating import PriceSpec
from invoicing.services import plans, subscriptions
from tests.invoicing.conftest import T0, hourly_plan, record, subscribed  # noqa: F401

EVENTS_URL = "/api/v1/events"
OPS_EMAILS = ["ops@operator.example"]
WEBHOOK_SECRET = "whsec-test-secret"
# Within the first hour [T0, T0 + 1 h): where the tests' events and checks happen.
NOW = T0 + timedelta(minutes=30)


@pytest.fixture(autouse=True)
def _ops_emails(settings):
    settings.BILLING_OPS_EMAILS = OPS_EMAILS


@pytest.fixture
def clock():
    """Time stands still at NOW (services and views read timezone.now()); move it with
    `clock.move_to(...)`."""
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def tasks_plan(meters):
    """An hourly plan billing only agent_tasks, 5 minor units each, with no minimum charge."""
    return plans.create_plan_version(
        code="tasks",
        name="Tasks",
        currency="USD",
        interval="hour",
        prices=[
            plans.PriceInput(
                "agent_tasks", PriceSpec(model="per_unit", unit_amount_minor=Decimal(5))
            )
        ],
    )


@pytest.fixture
def on_tasks_plan(customer, tasks_plan):
    """`customer` (acme) on the tasks-only plan from T0."""
    subscriptions.subscribe_customer(customer=customer, plan=tasks_plan, now=T0)
    return customer


def task_event(event_id: str, *, at=None, customer_id: str = "acme") -> dict:
    """One agent_tasks event (a count meter: no quantity)."""
    return {
        "event_id": event_id,
        "customer_id": customer_id,
        "meter": "agent_tasks",
        "timestamp": (at or T0 + timedelta(minutes=5)).isoformat(),
    }


@pytest.fixture
def post_tasks(api, django_capture_on_commit_callbacks, clock):
    """POST agent_tasks events one per request, running what they queue on commit (e-mails,
    webhooks); returns each response's body. Event ids continue across calls."""
    counter = {"n": 0}

    def _post(count: int, *, at=None, prefix: str = "task") -> list[dict]:
        bodies = []
        for _ in range(count):
            counter["n"] += 1
            with django_capture_on_commit_callbacks(execute=True):
                response = api.post(
                    EVENTS_URL, task_event(f"{prefix}-{counter['n']}", at=at), format="json"
                )
            assert response.status_code == 202, response.content
            bodies.append(response.json())
        return bodies

    return _post


@pytest.fixture
def put_budget(api, django_capture_on_commit_callbacks, clock):
    """PUT acme's budget (200 expected), running what it queues on commit; the body."""

    def _put(**body) -> dict:
        with django_capture_on_commit_callbacks(execute=True):
            response = api.put("/api/v1/customers/acme/budget", body, format="json")
        assert response.status_code == 200, response.content
        return response.json()

    return _put


@pytest.fixture
def acknowledge(api, django_capture_on_commit_callbacks, clock):
    """POST acme's acknowledgement, running what it queues on commit; the response."""

    def _acknowledge():
        with django_capture_on_commit_callbacks(execute=True):
            return api.post("/api/v1/customers/acme/budget/acknowledge")

    return _acknowledge


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class OperatorEndpoint:
    """What the fake agent platform received; answers 500 to the next `fail_next` requests."""

    url: str
    requests: list[Recorded] = field(default_factory=list)
    fail_next: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def operator_endpoint(settings):
    """A ThreadingHTTPServer on 127.0.0.1 configured as OPERATOR_WEBHOOK_URL."""
    endpoint: OperatorEndpoint | None = None

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            assert endpoint is not None
            with endpoint.lock:
                endpoint.requests.append(
                    Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                failing = endpoint.fail_next > 0
                endpoint.fail_next -= 1 if failing else 0
            self.send_response(500 if failing else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass  # keep the test output quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    endpoint = OperatorEndpoint(url=f"http://127.0.0.1:{server.server_port}/billing-events")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    settings.OPERATOR_WEBHOOK_URL = endpoint.url
    settings.OPERATOR_WEBHOOK_SECRET = WEBHOOK_SECRET
    yield endpoint
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
