#!/usr/bin/env python3
"""Ingestion throughput benchmark: batches of events posted to a real gunicorn + PostgreSQL.

    .venv/bin/python scripts/with_postgres.py --durable -- \
        .venv/bin/python bench/ingest.py [--events N] [--clients C] [--workers W]

Steps: migrate the database named by DATABASE_URL, create the customers, the three meters and a
service-wide API key, start gunicorn (production settings) on a free loopback port, let C client
processes build their request bodies (batches of 1,000 events, 10% of the events sent being
re-sends of events already sent in an earlier batch), start them together, then check every
response and the stored row count, print a result block and write it as JSON under
bench/results/. gunicorn is stopped whatever happens. The exit status is 0 only if every check
passed. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import multiprocessing as mp
import os
import queue
import random
import secrets
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
VENV_BIN = ROOT / ".venv" / "bin"
METERS = (
    # code, name, unit, aggregation
    ("agent_tasks", "Agent tasks", "task", "count"),
    ("llm_tokens", "LLM tokens", "token", "sum"),
    ("agent_minutes", "Agent minutes", "minute", "sum"),
)
MODELS = ("small", "medium", "large")


# --- Plan --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientPlan:
    """What one client process sends; picklable, so the child builds its own bodies."""

    index: int
    events: int  # events sent, duplicates included
    duplicates: int  # of which re-sends of events sent in an earlier batch
    batch_size: int
    customers: tuple[str, ...]
    run_id: str
    seed: int
    host: str
    port: int
    api_key: str
    request_timeout: float
    max_seconds: float  # after this long from the start signal, no new request is sent


def split_evenly(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def plan_clients(
    args: argparse.Namespace, *, customers: list[str], run_id: str, port: int, api_key: str
) -> list[ClientPlan]:
    sent = split_evenly(args.events, args.clients)
    plans = []
    for index, n in enumerate(sent):
        # Duplicates can only be re-sends of events of an earlier batch: none in the first one.
        duplicates = min(round(n * args.duplicate_ratio), max(0, n - args.batch_size))
        plans.append(
            ClientPlan(
                index=index,
                events=n,
                duplicates=duplicates,
                batch_size=args.batch_size,
                customers=tuple(customers),
                run_id=run_id,
                seed=args.seed * 1000 + index,
                host="127.0.0.1",
                port=port,
                api_key=api_key,
                request_timeout=args.request_timeout,
                max_seconds=args.max_seconds,
            )
        )
    return plans


def _timestamp(now: datetime, rng: random.Random) -> str:
    instant = now - timedelta(seconds=rng.uniform(0, 3600))
    return instant.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _new_event(plan: ClientPlan, seq: int, now: datetime, rng: random.Random) -> dict[str, Any]:
    code = METERS[seq % len(METERS)][0]
    event: dict[str, Any] = {
        "event_id": f"bench-{plan.run_id}-c{plan.index}-{seq:07d}",
        "customer_id": rng.choice(plan.customers),
        "meter": code,
        "timestamp": _timestamp(now, rng),
        "properties": {
            "agent_id": f"agent-{rng.randrange(50)}",
            "task_id": f"task-{rng.randrange(1_000_000)}",
            "model": rng.choice(MODELS),
        },
    }
    if code == "llm_tokens":
        event["quantity"] = rng.randrange(1, 200_000)
    elif code == "agent_minutes":
        event["quantity"] = f"{rng.uniform(0.01, 120):.3f}"  # decimal string, 3 places
    # agent_tasks is a count meter: quantity left out (defaults to 1).
    return event


def build_batches(plan: ClientPlan) -> tuple[list[bytes], list[list[bool]]]:
    """The request bodies, and for each batch which positions are expected to be duplicates.

    The duplicate positions are drawn at random among all positions after the first batch; a
    duplicate is a byte-identical copy of a new event of an earlier batch of this client, so it
    was acknowledged (202) before it is sent again.
    """
    rng = random.Random(plan.seed)
    now = datetime.now(UTC)
    dup_positions = set(rng.sample(range(plan.batch_size, plan.events), plan.duplicates))
    bodies: list[bytes] = []
    expected_dups: list[list[bool]] = []
    sent_before: list[dict[str, Any]] = []  # new events of the batches already built
    seq = 0
    for start in range(0, plan.events, plan.batch_size):
        stop = min(start + plan.batch_size, plan.events)
        batch: list[dict[str, Any]] = []
        flags: list[bool] = []
        fresh: list[dict[str, Any]] = []
        for position in range(start, stop):
            if position in dup_positions:
                batch.append(rng.choice(sent_before))
                flags.append(True)
            else:
                event = _new_event(plan, seq, now, rng)
                seq += 1
                batch.append(event)
                fresh.append(event)
                flags.append(False)
        sent_before.extend(fresh)
        bodies.append(json.dumps({"events": batch}, separators=(",", ":")).encode())
        expected_dups.append(flags)
    return bodies, expected_dups


# --- Client process ----------------------------------------------------------------------------


@dataclass
class ClientReport:
    index: int
    requests: int = 0
    events_sent: int = 0
    unique_sent: int = 0
    duplicates_sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    status_mismatches: int = 0
    first_start: float = 0.0
    last_end: float = 0.0
    cpu_s: float = 0.0  # this client's CPU time while sending
    body_bytes: int = 0


def run_client(plan: ClientPlan, ready: Any, start: Any, results: Any) -> None:
    """Build the bodies, wait for the start signal, post them in order, report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    report = ClientReport(index=plan.index)
    try:
        bodies, expected = build_batches(plan)
        report.body_bytes = sum(len(b) for b in bodies)
        headers = {
            "Authorization": f"Bearer {plan.api_key}",
            "Content-Type": "application/json",
        }
        conn = http.client.HTTPConnection(plan.host, plan.port, timeout=plan.request_timeout)
        ready.put(plan.index)
        if not start.wait(timeout=600):
            report.failures.append("start signal never came")
            results.put(report)
            return
        raw_responses: list[tuple[int, int, bytes]] = []  # (batch, status, body)
        cpu_before = time.process_time()
        report.first_start = time.monotonic()
        deadline = report.first_start + plan.max_seconds
        for number, body in enumerate(bodies):
            if time.monotonic() > deadline:
                report.failures.append(
                    f"deadline reached: {len(bodies) - number} batch(es) not sent"
                )
                break
            began = time.monotonic()
            try:
                conn.request("POST", "/api/v1/events", body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                report.failures.append(
                    f"client {plan.index} batch {number}: {type(exc).__name__}: {exc}"
                )
                conn.close()
                continue
            report.latencies.append(time.monotonic() - began)
            raw_responses.append((number, response.status, payload))
            if response.getheader("Connection", "").lower() == "close":
                conn.close()  # http.client reconnects on the next request
        report.last_end = time.monotonic()
        report.cpu_s = time.process_time() - cpu_before
        conn.close()
        # The clock has stopped for this client: now check what came back.
        for number, status, payload in raw_responses:
            _check_response(report, number, status, payload, expected[number])
    except Exception as exc:  # report anything rather than die silently
        report.failures.append(f"client {plan.index} crashed: {type(exc).__name__}: {exc}")
    results.put(report)


def _check_response(
    report: ClientReport, number: int, status: int, payload: bytes, flags: list[bool]
) -> None:
    report.requests += 1
    report.events_sent += len(flags)
    dups = sum(flags)
    report.duplicates_sent += dups
    report.unique_sent += len(flags) - dups
    if status != 202:
        report.failures.append(
            f"client {report.index} batch {number}: HTTP {status}: {payload[:200]!r}"
        )
        return
    try:
        data = json.loads(payload)
        report.accepted += data["accepted"]
        report.duplicates += data["duplicates"]
        report.conflicts += data["conflicts"]
        statuses = [item["status"] for item in data["events"]]
    except (ValueError, KeyError, TypeError) as exc:
        report.failures.append(f"client {report.index} batch {number}: unreadable 202 body ({exc})")
        return
    wanted = ["duplicate" if flag else "accepted" for flag in flags]
    if statuses != wanted:
        report.status_mismatches += sum(1 for a, b in zip(statuses, wanted, strict=False) if a != b)
        report.status_mismatches += abs(len(statuses) - len(wanted))


# --- Set-up: database, data, gunicorn ----------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(var_dir: Path) -> dict[str, str]:
    alphabet = string.ascii_letters + string.digits + "!@#%^&*(-_=+)"
    return dict(
        os.environ,
        BILLING_VAR_DIR=str(var_dir),  # broker and static folders: a throw-away directory
        BILLING_ENV="production",
        SECRET_KEY="".join(secrets.choice(alphabet) for _ in range(50)),
        ALLOWED_HOSTS="127.0.0.1",
        SECURE_SSL_REDIRECT="false",
        DEBUG="false",
        # the load is one key on purpose: its per-key rate limit would measure the limiter
        BILLING_RATE_LIMIT_EVENTS="off",
        DJANGO_SETTINGS_MODULE="billing_project.settings",
        LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
    )


class SetupError(Exception):
    """The bench could not prepare the database or the server (exit status 2)."""


def migrate(env: dict[str, str]) -> None:
    print("migrating ...", file=sys.stderr)
    try:
        subprocess.run(
            [str(VENV_BIN / "python"), "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=env,
            check=True,
            timeout=300,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"manage.py migrate failed ({exc}); see its output above") from None


def seed(customers: int, run_id: str) -> tuple[list[str], str]:
    """Customers, meters and a service-wide key, in-process; returns (external ids, key)."""
    from metering import services
    from metering.models import Customer, Meter

    external_ids = [f"bench-cust-{i:04d}" for i in range(customers)]
    existing = set(
        Customer.objects.filter(external_id__in=external_ids).values_list("external_id", flat=True)
    )
    Customer.objects.bulk_create(
        [
            Customer(external_id=x, name=f"Bench customer {x}", emails=[f"billing@{x}.example"])
            for x in external_ids
            if x not in existing
        ]
    )
    Customer.objects.filter(external_id__in=external_ids).update(status=Customer.Status.ACTIVE)
    for code, name, unit, aggregation in METERS:
        meter, created = Meter.objects.get_or_create(
            code=code, defaults={"name": name, "unit": unit, "aggregation": aggregation}
        )
        if not created and (meter.aggregation != aggregation or not meter.is_active):
            raise SetupError(
                f"meter {code} exists as {meter.aggregation}, active={meter.is_active}"
            )
    _, plaintext = services.create_api_key(name=f"bench {run_id}")
    return external_ids, plaintext


def stored_count(run_id: str) -> tuple[int, int]:
    """(all rows in the table, rows of this run)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM metering_usageevent")
        total = cursor.fetchone()[0]
        cursor.execute(
            "SELECT count(*) FROM metering_usageevent WHERE event_id LIKE %s",
            [f"bench-{run_id}-%"],
        )
        ours = cursor.fetchone()[0]
    return total, ours


class Gunicorn:
    """gunicorn in its own session, stopped (TERM, then KILL of its group) on exit."""

    def __init__(self, *, port: int, workers: int, env: dict[str, str], log: Path) -> None:
        self.port, self.log = port, log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            [
                str(VENV_BIN / "gunicorn"),
                "billing_project.wsgi",
                "-b",
                f"127.0.0.1:{port}",
                "-w",
                str(workers),
                "--timeout",
                "120",
                "--backlog",
                "256",
                "--no-control-socket",
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, api_key: str, timeout: float = 60) -> None:
        """/healthz also checks the Celery broker, so wait on the meters list instead."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SetupError(f"gunicorn exited with {self.proc.returncode}; see {self.log}")
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request(
                    "GET", "/api/v1/meters", headers={"Authorization": f"Bearer {api_key}"}
                )
                response = conn.getresponse()
                body = response.read()
                if response.status == 200:
                    return
                raise SetupError(f"GET /api/v1/meters gave {response.status}: {body[:300]!r}")
            except OSError:
                time.sleep(0.2)
            finally:
                conn.close()
        raise SetupError(f"gunicorn not ready after {timeout:g} s; see {self.log}")

    def worker_pids(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            return [int(p) for p in path.read_text().split()]
        return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log_file.close()


@dataclass
class CpuSnapshot:
    machine_busy: int  # clock ticks, all CPUs, from /proc/stat
    machine_total: int
    # pid -> (parent pid, own utime + stime, cutime + cstime of its exited, reaped children)
    processes: dict[int, tuple[int, int, int]]


def cpu_snapshot() -> CpuSnapshot:
    """CPU ticks of the machine and of every process (Linux /proc; empty elsewhere)."""
    busy = total = 0
    with contextlib.suppress(OSError):
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        total = sum(fields[:8])
        busy = total - fields[3] - fields[4]  # minus idle and iowait
    processes: dict[int, tuple[int, int, int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc/stat").exists() else []:
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = (entry / "stat").read_text()
            rest = raw[raw.rindex(")") + 2 :].split()
            own, reaped = int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14])
            processes[int(entry.name)] = (int(rest[1]), own, reaped)
    return CpuSnapshot(machine_busy=busy, machine_total=total, processes=processes)


def postmaster_pid() -> int | None:
    """The pid of the PostgreSQL server we talk to, if it runs on this machine."""
    from django.db import connection

    data_dir = os.environ.get("BILLING_TEST_PG_DATA")  # exported by scripts/with_postgres.py
    try:
        if not data_dir:
            with connection.cursor() as cursor:
                cursor.execute("SHOW data_directory")
                data_dir = cursor.fetchone()[0]
        return int((Path(data_dir) / "postmaster.pid").read_text().split()[0])
    except Exception:  # not local, not readable: PostgreSQL's CPU is then not reported
        return None


def cpu_breakdown(
    before: CpuSnapshot,
    after: CpuSnapshot,
    *,
    workers: list[int],
    postmaster: int | None,
    wall: float,
) -> dict[str, float]:
    """CPU seconds used during the load by gunicorn workers, PostgreSQL, and the machine."""
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def used(pids: set[int], *, reaped_by: int | None = None) -> float:
        ticks = sum(
            after.processes[pid][1] - before.processes.get(pid, (0, 0, 0))[1]
            for pid in pids
            if pid in after.processes
        )
        if reaped_by in after.processes:  # children that ended during the load (backends)
            ticks += after.processes[reaped_by][2] - before.processes.get(reaped_by, (0, 0, 0))[2]
        return round(ticks / hz, 2)

    # The postmaster and its children (backends, WAL writer, checkpointer...) of our server only.
    postgres = {pid for pid, (ppid, _, _) in after.processes.items() if postmaster in (pid, ppid)}
    total_ticks = after.machine_total - before.machine_total
    return {
        "gunicorn_workers_cpu_s": used(set(workers)),
        "postgres_cpu_s": used(postgres, reaped_by=postmaster) if postmaster else 0.0,
        "machine_busy_cpu_s": round((after.machine_busy - before.machine_busy) / hz, 2),
        "machine_capacity_cpu_s": round(wall * (os.cpu_count() or 1), 2),
        "machine_busy_pct": round(100 * (after.machine_busy - before.machine_busy) / total_ticks, 1)
        if total_ticks
        else 0.0,
    }


# --- Results -----------------------------------------------------------------------------------


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the working tree differed from it."""

    def git(*argv: str) -> str:
        try:
            done = subprocess.run(
                ["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip()

    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--", ".", ":!bench")),
    }


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0 if empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def summarise(
    args: argparse.Namespace,
    reports: list[ClientReport],
    *,
    wall: float,
    stored_before: int,
    stored_after: int,
    stored_run: int,
    planned: list[ClientPlan],
    run_id: str,
    cpu: dict[str, float],
) -> dict[str, Any]:
    latencies = sorted(x for r in reports for x in r.latencies)
    sent = sum(r.events_sent for r in reports)
    unique = sum(r.unique_sent for r in reports)
    duplicates = sum(r.duplicates_sent for r in reports)
    accepted = sum(r.accepted for r in reports)
    dup_responses = sum(r.duplicates for r in reports)
    conflicts = sum(r.conflicts for r in reports)
    requests = sum(r.requests for r in reports)
    mismatches = sum(r.status_mismatches for r in reports)
    failures = [f for r in reports for f in r.failures]
    stored = stored_after - stored_before
    clients_cpu = sum(r.cpu_s for r in reports)
    server_cpu = cpu.get("gunicorn_workers_cpu_s", 0.0) + cpu.get("postgres_cpu_s", 0.0)
    planned_events = sum(p.events for p in planned)
    checks = {
        "all_events_sent": sent == planned_events,
        "all_responses_202": not failures,
        "stored_rows_equal_unique": stored == unique and stored_run == unique,
        "accepted_equal_unique": accepted == unique,
        "duplicates_equal_duplicates_sent": dup_responses == duplicates,
        "no_conflicts": conflicts == 0,
        "per_event_statuses_as_expected": mismatches == 0,
    }
    return {
        "benchmark": "ingest",
        "run_id": run_id,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "events": args.events,
            "clients": args.clients,
            "workers": args.workers,
            "batch_size": args.batch_size,
            "customers": args.customers,
            "duplicate_ratio": args.duplicate_ratio,
            "request_timeout_s": args.request_timeout,
            "max_seconds": args.max_seconds,
            "seed": args.seed,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            **git_state(),
        },
        "events_sent": sent,
        "unique_events": unique,
        "duplicates_sent": duplicates,
        "requests": requests,
        "request_body_mb": round(sum(r.body_bytes for r in reports) / 1e6, 1),
        "wall_time_s": round(wall, 3),
        "events_per_s": round(sent / wall, 1) if wall else 0.0,
        "unique_events_per_s": round(unique / wall, 1) if wall else 0.0,
        "requests_per_s": round(requests / wall, 2) if wall else 0.0,
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50) * 1000, 1),
            "p90": round(percentile(latencies, 0.90) * 1000, 1),
            "p99": round(percentile(latencies, 0.99) * 1000, 1),
            "max": round(latencies[-1] * 1000, 1) if latencies else 0.0,
            "mean": round(statistics.fmean(latencies) * 1000, 1) if latencies else 0.0,
        },
        "responses": {
            "accepted": accepted,
            "duplicates": dup_responses,
            "conflicts": conflicts,
            "per_event_status_mismatches": mismatches,
        },
        "stored": {
            "rows_before": stored_before,
            "rows_after": stored_after,
            "new_rows": stored,
            "rows_with_this_run_prefix": stored_run,
        },
        "cpu": {
            **cpu,
            # Server CPU per event sent (gunicorn workers + PostgreSQL): unlike events/s this
            # hardly moves when other jobs share the machine. cpus / it = CPU-bound capacity.
            "server_cpu_us_per_event": round(server_cpu * 1e6 / sent, 1) if sent else 0.0,
            "cpu_bound_capacity_events_per_s": round((os.cpu_count() or 1) * sent / server_cpu)
            if server_cpu
            else 0,
            "clients_cpu_s": round(clients_cpu, 2),
            # Anything else on the machine (other jobs): a noisy neighbour shows here.
            "other_cpu_s": round(
                cpu.get("machine_busy_cpu_s", 0.0)
                - cpu.get("gunicorn_workers_cpu_s", 0.0)
                - cpu.get("postgres_cpu_s", 0.0)
                - clients_cpu,
                2,
            ),
        },
        "checks": checks,
        "ok": all(checks.values()),
        "failures": failures[:50],
        "failure_count": len(failures),
    }


def print_block(result: dict[str, Any], json_path: Path) -> None:
    ok = lambda flag: "OK" if flag else "FAIL"  # noqa: E731
    c, lat, checks = result["config"], result["latency_ms"], result["checks"]
    cpu = result["cpu"]
    lines = [
        "",
        "=" * 66,
        f"ingest benchmark  run {result['run_id']}  "
        f"({c['clients']} clients, {c['workers']} gunicorn workers, batch {c['batch_size']})",
        "-" * 66,
        f"events sent          {result['events_sent']:>12,}",
        f"  unique             {result['unique_events']:>12,}",
        f"  duplicates         {result['duplicates_sent']:>12,}",
        f"requests             {result['requests']:>12,}   "
        f"({result['request_body_mb']} MB of JSON)",
        f"wall time            {result['wall_time_s']:>12.2f} s",
        f"events/s             {result['events_per_s']:>12,.0f}   "
        f"(unique {result['unique_events_per_s']:,.0f}/s)",
        f"requests/s           {result['requests_per_s']:>12.1f}",
        f"latency p50 / p99    {lat['p50']:>8.1f} / {lat['p99']:.1f} ms   "
        f"(p90 {lat['p90']:.1f}, max {lat['max']:.1f})",
        f"CPU s during load    gunicorn {cpu['gunicorn_workers_cpu_s']:.1f}, "
        f"postgres {cpu['postgres_cpu_s']:.1f}, clients {cpu['clients_cpu_s']:.1f}, "
        f"other {cpu['other_cpu_s']:.1f}; machine {cpu['machine_busy_pct']:.0f}% busy",
        f"server CPU per event {cpu['server_cpu_us_per_event']:>8.1f} us   (CPU-bound capacity "
        f"on {c['cpus']} CPUs: {cpu['cpu_bound_capacity_events_per_s']:,} events/s)",
        "-" * 66,
        f"stored rows == unique      {ok(checks['stored_rows_equal_unique'])}   "
        f"({result['stored']['new_rows']:,} new rows)",
        f"accepted == unique         {ok(checks['accepted_equal_unique'])}   "
        f"({result['responses']['accepted']:,})",
        f"duplicates == dups sent    {ok(checks['duplicates_equal_duplicates_sent'])}   "
        f"({result['responses']['duplicates']:,})",
        f"no conflicts               {ok(checks['no_conflicts'])}",
        f"per-event statuses         {ok(checks['per_event_statuses_as_expected'])}",
        f"every response 202         {ok(checks['all_responses_202'])}   "
        f"({result['failure_count']} failure(s))",
        f"every event sent           {ok(checks['all_events_sent'])}",
        "-" * 66,
        f"RESULT: {'OK' if result['ok'] else 'FAIL'}   -> {json_path.relative_to(ROOT)}",
        "=" * 66,
    ]
    for failure in result["failures"][:10]:
        lines.insert(-3, f"  ! {failure[:150]}")
    print("\n".join(lines), flush=True)


# --- Main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events sent (with dups)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client processes")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers")
    parser.add_argument("--batch-size", type=int, default=1000, help="events per request")
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--duplicate-ratio", type=float, default=0.10)
    parser.add_argument("--request-timeout", type=float, default=60.0, help="seconds")
    parser.add_argument(
        "--max-seconds", type=float, default=900.0, help="the load phase stops after this"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="seconds to wait with gunicorn up before the load starts (to attach a profiler)",
    )
    args = parser.parse_args(argv)
    if args.events < 1 or args.clients < 1 or args.workers < 1 or args.customers < 1:
        parser.error("--events, --clients, --workers and --customers must be >= 1")
    if not 1 <= args.batch_size <= 1000:
        parser.error("--batch-size must be 1 to 1000 (the API's limit)")
    if not 0 <= args.duplicate_ratio < 1:
        parser.error("--duplicate-ratio must be in [0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        print(
            "DATABASE_URL must name a PostgreSQL database; run me through\n"
            "  .venv/bin/python scripts/with_postgres.py --durable -- "
            ".venv/bin/python bench/ingest.py",
            file=sys.stderr,
        )
        return 2

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    var_dir = Path(tempfile.mkdtemp(prefix="billing-bench-var-"))
    (var_dir / "static").mkdir()
    try:
        return run(args, var_dir)
    except SetupError as exc:
        print(f"bench set-up failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(var_dir, ignore_errors=True)


def run(args: argparse.Namespace, var_dir: Path) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"{stamp}-{secrets.token_hex(2)}"
    env = server_env(var_dir)
    # The same settings in-process (seeding, counting) as in gunicorn.
    for name in ("BILLING_VAR_DIR", "BILLING_ENV", "SECRET_KEY", "ALLOWED_HOSTS", "DEBUG"):
        os.environ[name] = env[name]
    for name in ("SECURE_SSL_REDIRECT", "LOG_LEVEL", "DJANGO_SETTINGS_MODULE"):
        os.environ[name] = env[name]
    sys.path.insert(0, str(ROOT))

    migrate(env)
    import django

    django.setup()
    from django.db import connections

    customers, api_key = seed(args.customers, run_id)
    stored_before, _ = stored_count(run_id)
    postmaster = postmaster_pid()
    connections.close_all()

    port = free_port()
    log = RESULTS_DIR / f"gunicorn-{stamp}.log"
    server: Gunicorn | None = None
    procs: list[mp.Process] = []
    ctx = mp.get_context("spawn")
    try:
        server = Gunicorn(port=port, workers=args.workers, env=env, log=log)
        server.wait_ready(api_key)
        workers = server.worker_pids()
        print(
            f"gunicorn pid {server.proc.pid} on 127.0.0.1:{port}, "
            f"workers {workers}; PostgreSQL postmaster pid {postmaster}; "
            f"log {log.relative_to(ROOT)}",
            file=sys.stderr,
        )
        if args.hold:
            print(f"holding {args.hold:g} s before the load ...", file=sys.stderr)
            time.sleep(args.hold)

        ready, start, results = ctx.Queue(), ctx.Event(), ctx.Queue()
        plans = plan_clients(args, customers=customers, run_id=run_id, port=port, api_key=api_key)
        for plan in plans:
            proc = ctx.Process(target=run_client, args=(plan, ready, start, results), daemon=True)
            proc.start()
            procs.append(proc)
        print(f"{len(plans)} clients building their bodies ...", file=sys.stderr)
        for _ in plans:
            ready.get(timeout=600)
        cpu_before = cpu_snapshot()
        started = time.monotonic()
        start.set()
        print("load started", file=sys.stderr)

        reports: list[ClientReport] = []
        grace = args.request_timeout + 60
        end_by = started + args.max_seconds + grace
        while len(reports) < len(plans):
            try:
                reports.append(results.get(timeout=max(1.0, end_by - time.monotonic())))
            except queue.Empty:
                missing = sorted({p.index for p in plans} - {r.index for r in reports})
                for index in missing:
                    reports.append(ClientReport(index=index, failures=["client did not report"]))
                break
        cpu_after = cpu_snapshot()  # includes the clients' response checks: a few ms
        ended = max((r.last_end for r in reports if r.last_end), default=time.monotonic())
        wall = ended - started
        for proc in procs:
            proc.join(timeout=5)

        stored_after, stored_run = stored_count(run_id)
        result = summarise(
            args,
            reports,
            wall=wall,
            stored_before=stored_before,
            stored_after=stored_after,
            stored_run=stored_run,
            planned=plans,
            run_id=run_id,
            cpu=cpu_breakdown(
                cpu_before, cpu_after, workers=workers, postmaster=postmaster, wall=wall
            ),
        )
        json_path = RESULTS_DIR / f"ingest-{stamp}.json"
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        print_block(result, json_path)
        return 0 if result["ok"] else 1
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        if server is not None:
            server.stop()
        connections.close_all()


if __name__ == "__main__":
    sys.exit(main())
