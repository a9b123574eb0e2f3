"""Fixtures of the end-to-end suite (the assembled system), and the report it writes.

After a session in which every collected end-to-end scenario ran, docs/reliability.md is
rewritten from the results: one row per scenario with what it checks (the test's docstring),
its outcome and its duration. A partial run (-k, -x, a deselection) or a run in which every
scenario was skipped leaves the document as it was.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.db import connection

from tests.e2e import processes
from tests.e2e.stack import Stack, remove_pauses

E2E_DIR = Path(__file__).resolve().parent
REPORT = E2E_DIR.parents[1] / "docs" / "reliability.md"
PAUSED_TABLES = (
    "metering_usageaggregate",
    "invoicing_invoice",
    "invoicing_invoiceline",
    "invoicing_auditentry",
    "notifications_notification",
)


@contextmanager
def _running_stack(tmp_path: Path, *, persistent_redis: bool) -> Iterator[Stack]:
    with (
        processes.restartable_redis(tmp_path, persistent=persistent_redis) as redis,
        processes.smtp_capture() as mail,
        processes.fake_stripe_running() as stripe,
    ):
        system = Stack(tmp_path, redis=redis, mail=mail, stripe=stripe)
        try:
            yield system
        finally:
            system.stop_all()
            connection.close()  # it may have been cut by a restart of PostgreSQL
            remove_pauses(*PAUSED_TABLES)
            processes.terminate_other_backends()


@pytest.fixture
def stack(tmp_path, meters, service_key) -> Iterator[Stack]:
    """Redis (persistent: its append-only file survives a restart), the SMTP capture and the
    fake Stripe, running; the test starts gunicorn, workers and beat through the Stack.
    Everything stops afterwards, and sessions left behind by killed processes are ended before
    the database is flushed."""
    with _running_stack(tmp_path, persistent_redis=True) as system:
        yield system


@pytest.fixture
def volatile_stack(tmp_path, meters, service_key) -> Iterator[Stack]:
    """The same, with a Redis without persistence: a restart empties its queues."""
    with _running_stack(tmp_path, persistent_redis=False) as system:
        yield system


@pytest.fixture
def dead_clients_noticed() -> Iterator[None]:
    """PostgreSQL checks every 250 ms whether a session's client is still there while it
    runs a query, so the session of a SIGKILLed worker ends (and its transaction rolls back,
    releasing its locks) at once, as with TCP keepalives on a production server."""
    name = connection.ops.quote_name(connection.settings_dict["NAME"])
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER DATABASE {name} SET client_connection_check_interval = 250")
    yield
    connection.close()
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER DATABASE {name} RESET client_connection_check_interval")


# --- docs/reliability.md ---------------------------------------------------------------------

_scenarios: dict[str, tuple[str, str]] = {}  # nodeid -> (name, what it checks)
_results: dict[str, dict] = {}  # nodeid -> outcome, detail, duration


def _checks(item: pytest.Item) -> str:
    """What a scenario checks: its test's docstring, else its module's."""
    doc = getattr(getattr(item, "function", None), "__doc__", None)
    doc = doc or getattr(getattr(item, "module", None), "__doc__", None) or ""
    return " ".join(doc.split()) or "(no docstring)"


def pytest_itemcollected(item: pytest.Item) -> None:
    if E2E_DIR in Path(str(item.path)).resolve().parents:
        name = f"{Path(str(item.path)).stem}::{item.name}"
        _scenarios[item.nodeid] = (name, _checks(item))


def pytest_deselected(items: list[pytest.Item]) -> None:
    for item in items:
        _scenarios.pop(item.nodeid, None)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid not in _scenarios:
        return
    result = _results.setdefault(report.nodeid, {"outcome": None, "detail": "", "duration": 0.0})
    result["duration"] += report.duration
    wasxfail = getattr(report, "wasxfail", None)
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if wasxfail is not None and report.skipped:
            result["outcome"], result["detail"] = "xfail", wasxfail
        elif report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            result["outcome"], result["detail"] = "skipped", str(reason)
        elif report.failed:
            result["outcome"] = "failed" if report.when == "call" else "error"
            result["detail"] = report.longreprtext.strip().splitlines()[-1][:300]
        else:
            result["outcome"] = "passed"
    elif report.when == "teardown" and report.failed:
        result["outcome"] = "error"
        result["detail"] = "teardown: " + report.longreprtext.strip().splitlines()[-1][:300]


def _version(command: list[str]) -> str:
    if shutil.which(command[0]) is None:
        return "missing"
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"
    # "Redis server v=7.0.15 sha=..." -> "Redis 7.0.15"; "psql (PostgreSQL) 15.18 (...)" -> ...
    match = re.search(r"(Redis|PostgreSQL)\D*?(\d+\.[\d.]+)", text)
    return f"{match[1]} {match[2]}" if match else text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    modules = {name.split("::")[0] for name, _ in _scenarios.values()}
    if modules != {path.stem for path in E2E_DIR.glob("test_*.py")}:
        return  # not every scenario was collected (a file, -k): the document stays as it is
    if set(_scenarios) - set(_results):
        return  # a partial run (-x, interrupted): the document stays as it is
    ran = [nodeid for nodeid in _scenarios if _results[nodeid]["outcome"] != "skipped"]
    if not ran:
        return
    total = sum(r["duration"] for r in _results.values())
    counts: dict[str, int] = {}
    for result in _results.values():
        counts[result["outcome"]] = counts.get(result["outcome"], 0) + 1
    lines = [
        "# Reliability: the end-to-end scenarios and their results",
        "",
        "Generated by the end-to-end suite (`tests/e2e/conftest.py`) at the end of its last full",
        "run; do not edit by hand. Run it with:",
        "",
        "```sh",
        ".venv/bin/python scripts/with_postgres.py -- .venv/bin/python -m pytest -q tests/e2e",
        "```",
        "",
        "The scenarios run real processes: PostgreSQL, Redis, gunicorn, Celery workers and beat,",
        "the fake Stripe server on loopback and an SMTP server capturing mail (the clock scenario",
        "runs the close in the test process, under a shifted clock). After its fault, each",
        "scenario of `test_fleet.py` and `test_faults.py` checks the same promises",
        "(`tests/e2e/invariants.py`):",
        "",
        "1. unique events sent == events stored == billed quantity, each event billed by exactly",
        "   one aggregate;",
        "2. one invoice per period, every due period closed exactly once;",
        "3. Stripe's invoices equal ours: one per finalized invoice, same total, one item per",
        "   line;",
        "4. one e-mail per notification;",
        "5. `manage.py reconcile` exits 0.",
        "",
        f"Last run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {len(_results)} scenarios in "
        f"{total:.0f} s ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}); "
        f"Python {platform.python_version()}, {_version(['redis-server', '--version'])}, "
        f"{_version(['psql', '--version'])}, {os.cpu_count()} CPUs.",
        "",
        "| Scenario | What it checks | Result | Duration |",
        "|---|---|---|---|",
    ]
    for nodeid, (name, checks) in _scenarios.items():
        result = _results[nodeid]
        outcome = result["outcome"]
        if outcome == "xfail":
            outcome = f"**expected failure (open defect)**: {result['detail']}"
        elif result["detail"] and outcome != "passed":
            outcome = f"**{outcome}**: {result['detail']}"
        lines.append(
            f"| `{_cell(name)}` | {_cell(checks)} | {_cell(outcome)} | {result['duration']:.1f} s |"
        )
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")
