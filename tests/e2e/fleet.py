"""A simulated agent fleet: threads posting usage over HTTP to the live service.

Most agents use the real agent client (clients/python: a durable spool, batches, retries with
backoff, the same event id on every resend). One agent speaks plain HTTP and misbehaves on
purpose: it retries a batch until it is answered and then sends it once more, so the service
sees duplicates however the network behaves. The ledger keeps each unique event once: what the
books must show afterwards.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import requests
from django.utils import timezone

CLIENT_SRC = Path(__file__).resolve().parents[2] / "clients" / "python" / "src"
try:
    import agent_billing  # noqa: F401 - installed with `pip install -e clients/python`
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(CLIENT_SRC))

from agent_billing import Client  # noqa: E402

# Short waits: the scenarios must stay quick and bounded.
CLIENT_OPTIONS = {
    "flush_interval": 0.2,
    "backoff_base": 0.1,
    "max_backoff": 1.0,
    "max_retries": 100,
    "timeout": 10,
    "close_timeout": 5,
    "batch_size": 50,
}


@dataclass
class Ledger:
    """Every unique event the fleet sent, by (customer, event id): (meter, quantity)."""

    events: dict[tuple[str, str], tuple[str, Decimal]] = field(default_factory=dict)
    resends: int = 0  # deliberate duplicate sends of the raw agent
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, customer: str, event_id: str, meter: str, quantity: Decimal) -> None:
        with self.lock:
            assert (customer, event_id) not in self.events, (customer, event_id)
            self.events[(customer, event_id)] = (meter, quantity)

    def totals(self) -> dict[tuple[str, str], tuple[int, Decimal]]:
        """(customer, meter) -> (unique events, quantity)."""
        totals: dict[tuple[str, str], list] = defaultdict(lambda: [0, Decimal(0)])
        for (customer, _), (meter, quantity) in self.events.items():
            totals[(customer, meter)][0] += 1
            totals[(customer, meter)][1] += quantity
        return {key: (n, q) for key, (n, q) in totals.items()}


@dataclass
class FleetReport:
    ledger: Ledger
    client_stats: list[dict] = field(default_factory=list)
    raw_attempts: int = 0  # HTTP requests of the raw agent, retries and resends included
    raw_failures: int = 0  # of which unanswered or answered 5xx
    errors: list[str] = field(default_factory=list)

    @property
    def retries(self) -> int:
        return sum(s["retries"] for s in self.client_stats) + self.raw_failures


# The demo's rate card prices llm_tokens by model and token type, and leaves `medium` unpriced.
MODELS = ("small", "medium", "large")


def usage(rng: random.Random) -> list[tuple[str, Decimal, dict[str, str]]]:
    """One agent task: the task, its input and output tokens (by model), its minutes (2
    decimal places); each with the properties it adds to the event."""
    model = rng.choice(MODELS)
    return [
        ("agent_tasks", Decimal(1), {}),
        ("llm_tokens", Decimal(rng.randint(1, 5000)), {"model": model, "token_type": "input"}),
        ("llm_tokens", Decimal(rng.randint(1, 1000)), {"model": model, "token_type": "output"}),
        ("agent_minutes", Decimal(rng.randint(1, 600)) / 100, {}),
    ]


def usage_name(meter: str, properties: dict[str, str]) -> str:
    """A part of an event id naming one of a task's events ("llm_tokens-output")."""
    return "-".join([meter, *([properties["token_type"]] if "token_type" in properties else [])])


def run_fleet(
    *,
    url: str,
    key: str,
    customers: list[str],
    spool_dir: Path,
    agents: int = 3,
    tasks_per_agent: int = 40,
    pace: float = 0.02,
    timestamp: Callable[[random.Random], datetime | None] = lambda rng: None,
    while_posting: Callable[[], None] | None = None,
    flush_timeout: float = 60,
) -> FleetReport:
    """Post `tasks_per_agent` tasks' usage from each agent (one of them the raw HTTP agent),
    run `while_posting` meanwhile (a fault), and wait until every client has delivered."""
    report = FleetReport(ledger=Ledger())
    clients = [
        Client(url, key, spool_path=spool_dir / f"agent-{n}.sqlite3", **CLIENT_OPTIONS)
        for n in range(agents - 1)
    ]
    started = threading.Event()

    def client_agent(n: int, client: Client) -> None:
        rng = random.Random(n)
        for task in range(tasks_per_agent):
            customer = rng.choice(customers)
            at = timestamp(rng)
            for meter, quantity, extra in usage(rng):
                event_id = client.record(
                    customer,
                    meter,
                    quantity,
                    properties={"agent_id": f"agent-{n}", "task": task, **extra},
                    timestamp=at,
                )
                report.ledger.add(customer, event_id, meter, quantity)
            if task == tasks_per_agent // 4:
                started.set()
            time.sleep(pace)

    def raw_agent(n: int) -> None:
        rng = random.Random(n)
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        for batch_no in range(tasks_per_agent // 4):
            batch = []
            for task in range(4):
                customer = rng.choice(customers)
                at = timestamp(rng) or timezone.now()
                for meter, quantity, extra in usage(rng):
                    batch.append(
                        {
                            "event_id": f"raw-{n}-{batch_no}-{task}-{usage_name(meter, extra)}",
                            "customer_id": customer,
                            "meter": meter,
                            "quantity": str(quantity),
                            "timestamp": at.isoformat(),
                            "properties": extra,
                        }
                    )
            for event in batch:
                report.ledger.add(
                    event["customer_id"],
                    event["event_id"],
                    event["meter"],
                    Decimal(event["quantity"]),
                )
            _post_until_answered(session, url, batch, report)
            _post_until_answered(session, url, batch, report, resend=True)  # a duplicate
            time.sleep(pace * 4)

    threads = [
        threading.Thread(target=client_agent, args=(n, c), name=f"agent-{n}")
        for n, c in enumerate(clients)
    ]
    threads.append(threading.Thread(target=raw_agent, args=(agents - 1,), name="raw-agent"))
    for thread in threads:
        thread.start()
    try:
        if while_posting is not None:
            started.wait(timeout=30)
            while_posting()
    finally:
        for thread in threads:
            thread.join(timeout=120)
        for client in clients:
            if not client.flush(timeout=flush_timeout):
                report.errors.append(f"{client!r}: not delivered: {client.stats}")
            report.client_stats.append(client.stats)
            client.close(timeout=1)
    assert not any(t.is_alive() for t in threads), "an agent thread did not finish"
    return report


def _post_until_answered(
    session: requests.Session, url: str, batch: list[dict], report: FleetReport, *, resend=False
) -> None:
    """POST the batch until the service answers it (bounded: 60 s); a resend must come back
    all duplicates."""
    deadline = time.monotonic() + 60
    delay = 0.1
    while True:
        report.raw_attempts += 1
        try:
            response = session.post(f"{url}/api/v1/events", json={"events": batch}, timeout=10)
        except requests.RequestException:
            response = None
        if response is not None and response.status_code == 202:
            body = response.json()
            if resend:
                report.ledger.resends += 1
                if body["duplicates"] != len(batch):
                    report.errors.append(f"resend answered {body['accepted']} accepted")
            return
        report.raw_failures += 1
        if response is not None and response.status_code < 500 and response.status_code != 429:
            report.errors.append(f"raw agent: HTTP {response.status_code}: {response.text[:300]}")
            return
        if time.monotonic() > deadline:
            report.errors.append("raw agent: no answer within 60 s")
            return
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
