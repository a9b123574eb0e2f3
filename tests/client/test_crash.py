"""An agent process killed (SIGKILL) while a batch is in flight: nothing lost, nothing doubled.

A proxy forwards the agent's second request to the service, which stores the batch, and holds
the answer: the kill lands after the service committed the batch and before the agent could
remove it from its spool. A new process opening the same spool sends it again; the service
answers "duplicate" for exactly those events.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from metering.models import UsageEvent
from tests.client.conftest import CLIENT_SRC
from tests.client.helpers import spooled, stored
from tests.client.proxy import Proxy

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

AGENT = Path(__file__).with_name("agent_process.py")
N = 300


def agent(url: str, spool: Path, key: str, count: int) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "AGENT_BILLING_KEY": key}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CLIENT_SRC), env.get("PYTHONPATH")]))
    return [
        sys.executable,
        str(AGENT),
        "--url",
        url,
        "--spool",
        str(spool),
        "--count",
        str(count),
        "--batch-size",
        "100",
    ], env


def lines_of(stream) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line.strip())

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_agent_killed_mid_batch_loses_nothing_and_doubles_nothing(
    live_server, service_key, customer, meters, tmp_path
):
    spool = tmp_path / "agent.sqlite3"
    proxy = Proxy(live_server.url)
    proxy.hold_post = 2
    proxy.start()
    argv, env = agent(proxy.url, spool, service_key[1], N)
    log = (tmp_path / "agent-1.log").open("w")
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert lines_of(process.stdout).get(timeout=30) == f"recorded {N}"
        assert proxy.held.wait(timeout=30), "the agent never sent a second batch"
        process.kill()  # SIGKILL: no atexit, no flush, no clean anything
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        proxy.stop()
        log.close()

    first, second = proxy.posts()[:2]
    assert len(proxy.posts()) == 2
    # The held batch was committed by the service...
    assert UsageEvent.objects.count() == first["events"] + second["events"]
    # ...and is still in the dead agent's spool, with everything not yet sent.
    assert spooled(spool) == N - first["events"]

    argv, env = agent(live_server.url, spool, service_key[1], 0)  # restart: same spool
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["delivered"] is True
    assert stats["duplicates"] == second["events"]  # the resent, already stored batch
    assert stats["accepted"] == N - first["events"] - second["events"]
    assert (stats["conflicts"], stats["pending"]) == (0, 0)

    events = stored()
    assert len(events) == N == UsageEvent.objects.count()
    assert set(second["ids"]) <= set(events)
    assert sorted(quantity for _, quantity in events.values()) == [
        Decimal(1000 + i) for i in range(N)
    ]
