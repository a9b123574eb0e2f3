#!/usr/bin/env python3
"""A simulated agent fleet for the demo, built on the agent_billing client.

    python scripts/demo_agent.py [--url http://127.0.0.1:8000] [--agents 3]

Each agent loops until Ctrl-C/SIGTERM: it picks a demo customer ("acme" or "globex"), asks
`ensure_allowed` (idling while the customer is paused at its budget cap), then runs one task
as a unit of work: one `agent_tasks` and the task's elapsed `agent_minutes`, and a random few
thousand `llm_tokens` as two events, input and output (`token_type`), of the task's `model`
(small, medium or large: the demo plans price small and large and leave medium unpriced, so
the unpriced flow shows in the back office). One line a minute says what was recorded and delivered.

The API key is read from $AGENT_BILLING_API_KEY or var/demo-api-key (written by
`manage.py seed_demo`). Unless --no-demo-cap, a customer without a budget cap gets the demo
cap (acme: pause at 30.00 USD) so the cap visibly fills; an existing cap is never changed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
try:
    import agent_billing
except ImportError:  # not installed in this environment: use the source tree
    sys.path.insert(0, str(ROOT / "clients" / "python" / "src"))
    import agent_billing

MODELS = ["small", "medium", "large"]
# The customers the fleet works for by default: never `initech`, the README's API example.
FLEET_CUSTOMERS = ("acme", "globex")
DEMO_CAPS = {"acme": 3000}  # minor units (30.00 USD), action "pause"


def read_key(path: Path) -> str:
    key = os.environ.get("AGENT_BILLING_API_KEY", "").strip()
    if key:
        return key
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        sys.exit(f"no API key: set AGENT_BILLING_API_KEY or run `manage.py seed_demo` ({path})")


def api(url: str, key: str, method: str, path: str, body: dict | None = None) -> dict:
    """A plain call to the service, for the demo's one-off set-up (not usage)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 - the demo's own http(s) URL
        url + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read() or b"{}")


def ensure_demo_caps(url: str, key: str, customers: list[str]) -> None:
    for customer, cap in DEMO_CAPS.items():
        if customer not in customers:
            continue
        path = f"/api/v1/customers/{customer}/budget"
        try:
            budget = api(url, key, "GET", path)
            if budget.get("cap_minor") is None:
                api(url, key, "PUT", path, {"cap_minor": cap, "action": "pause"})
                print(f"demo agent: {customer} had no budget cap; set {cap} minor units (pause)")
        except (OSError, urllib.error.URLError, ValueError) as exc:
            print(f"demo agent: could not check the budget of {customer}: {exc}", file=sys.stderr)


class Fleet:
    def __init__(self, client: agent_billing.Client, customers: list[str], stop: threading.Event):
        self.client = client
        self.customers = customers
        self.stop = stop
        self.lock = threading.Lock()
        self.tasks: Counter[str] = Counter()
        self.tokens: Counter[str] = Counter()
        self.minutes: Counter[str] = Counter()
        self.paused: set[str] = set()
        self.idle_checks: Counter[str] = Counter()

    def agent(self, name: str) -> None:
        while not self.stop.is_set():
            customer = random.choice(self.customers)  # noqa: S311 - a simulation
            try:
                self.client.ensure_allowed(customer)
            except agent_billing.BudgetExceeded:
                self._paused(customer, True)
                self.stop.wait(5)  # idle while paused; the allowance is cached for 5 s
                continue
            except agent_billing.AgentBillingError as exc:
                print(f"demo agent {name}: allowance check failed: {exc}", file=sys.stderr)
                self.stop.wait(5)
                continue
            self._paused(customer, False)
            properties = {"agent_id": name, "model": random.choice(MODELS)}  # noqa: S311
            with self.client.unit_of_work(
                customer, "agent_tasks", minutes_meter="agent_minutes", properties=properties
            ) as work:
                self.stop.wait(random.uniform(0.5, 2.5))  # noqa: S311 - "thinking"
                tokens = random.randint(1, 9) * 1000 + random.randint(0, 999)  # noqa: S311
                output = tokens // 4  # the answer; the rest is the prompt
                # Tokens by model and token type: the demo plans price them by both, and
                # leave `medium` unpriced on purpose (finance bills or waives it).
                for token_type, count in (("input", tokens - output), ("output", output)):
                    self.client.record(
                        customer,
                        "llm_tokens",
                        count,
                        properties={**properties, "token_type": token_type},
                    )
            with self.lock:
                self.tasks[customer] += 1
                self.tokens[customer] += tokens
                self.minutes[customer] += float(work.minutes or 0)

    def _paused(self, customer: str, paused: bool) -> None:
        with self.lock:
            if paused:
                self.idle_checks[customer] += 1
                if customer in self.paused:
                    return
                self.paused.add(customer)
            elif customer in self.paused:
                self.paused.discard(customer)
            else:
                return
        state = "is paused at its budget cap; its agents idle" if paused else "resumed"
        print(f"demo agent: {customer} {state}", flush=True)

    def report(self) -> str:
        with self.lock:
            parts = [
                f"{c}: {self.tasks[c]} tasks, {self.tokens[c]:,} tokens, "
                f"{self.minutes[c]:.2f} min" + (" (PAUSED)" if c in self.paused else "")
                for c in self.customers
            ]
        stats = self.client.stats
        return (
            f"[{datetime.now().astimezone():%H:%M:%S}] demo agent: "
            + " | ".join(parts)
            + f" | delivered {stats['accepted']} events, {stats['pending']} waiting"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description="a simulated agent fleet for the demo")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key-file", default=str(ROOT / "var" / "demo-api-key"))
    parser.add_argument("--customers", default=",".join(FLEET_CUSTOMERS))
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--spool", default=str(ROOT / "var" / "demo-agent-spool.sqlite3"))
    parser.add_argument("--report-every", type=float, default=60.0, help="seconds")
    parser.add_argument("--no-demo-cap", action="store_true", help="never set a budget cap")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")

    url = args.url.rstrip("/")
    key = read_key(Path(args.key_file))
    customers = [c.strip() for c in args.customers.split(",") if c.strip()]
    if not args.no_demo_cap:
        ensure_demo_caps(url, key, customers)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    client = agent_billing.Client(url, key, spool_path=args.spool)
    fleet = Fleet(client, customers, stop)
    agents = [
        threading.Thread(target=fleet.agent, args=(f"agent-{n + 1}",), daemon=True)
        for n in range(args.agents)
    ]
    for thread in agents:
        thread.start()
    print(
        f"demo agent: {args.agents} agents working for {', '.join(customers)} on {url} "
        f"(one line a minute; Ctrl-C stops)",
        flush=True,
    )
    while not stop.wait(args.report_every):
        print(fleet.report(), flush=True)
    for thread in agents:
        thread.join(timeout=5)
    client.close(timeout=5)  # what is not delivered by then stays spooled for next time
    print(fleet.report(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
