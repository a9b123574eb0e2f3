#!/usr/bin/env python3
"""Ingestion throughput benchmark: events posted to a real gunicorn + PostgreSQL, and the same
rows written by psycopg alone in the same run, to measure the database's own limit.

    .venv/bin/python scripts/with_postgres.py --durable -- \
        .venv/bin/python bench/ingest.py [--events N] [--clients C] [--workers W] [--single]

Steps: collect the static files and migrate the database named by DATABASE_URL, create the
customers, the three meters and a service-wide API key, start gunicorn (production settings) on
a free loopback port. Then two phases with the same C client processes and the same events
(batches of 1,000, 10% of the events sent being re-sends of events already sent in an earlier
batch), each under fresh event ids: first the DB-only phase, where each client writes its
batches through one psycopg connection with the service's own statements
(metering/event_store/postgresql.py), no HTTP and no Django; then the HTTP phase, where each
client posts them to gunicorn while the workers' memory is sampled. Every response and the stored
row counts are checked, a result block printed (with the ratio HTTP / DB-only) and written as
JSON under bench/results/. With --single each request (and each DB-only transaction) carries one
event. gunicorn is stopped whatever happens. The exit status is 0 only if every check passed. See
bench/README.md for what each figure means.
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
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # metering.event_parsing / event_store: no Django needed
RESULTS_DIR = ROOT / "bench" / "results"
VENV_BIN = ROOT / ".venv" / "bin"
METERS = (
    # code, name, unit, aggregation
    ("agent_tasks", "Agent tasks", "task", "count"),
    ("llm_tokens", "LLM tokens", "token", "sum"),
    ("agent_minutes", "Agent minutes", "minute", "sum"),
)
MODELS = tuple(f"m{i}" for i in range(20))
TOKEN_TYPES = ("input", "output", "cached")


# --- Plan --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientPlan:
    """What one client process sends; picklable, so the child builds its own bodies."""

    phase: str  # "http" (posts to gunicorn) or "db" (psycopg alone)
    single: bool  # one event per request (a bare event object) instead of {"events": [...]}
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
    # The DB-only phase resolves ids itself, as the service does: {external id: pk},
    # {meter code: (pk, aggregation)}, the key's pk, the usage-lock namespace, the server.
    customer_pks: dict[str, int] = field(default_factory=dict)
    meters: dict[str, tuple[int, str]] = field(default_factory=dict)
    api_key_pk: int = 0
    lock_namespace: int = 0
    dsn: str = ""

    @property
    def prefix(self) -> str:
        """Every event id of this phase starts with it (fresh ids in each phase)."""
        return f"bench-{self.run_id}-{self.phase}-"


def split_evenly(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def plan_clients(
    args: argparse.Namespace, *, phase: str, run_id: str, port: int, api_key: str, **db: Any
) -> list[ClientPlan]:
    """The clients of one phase; the same events in both phases (same seeds), other ids."""
    sent = split_evenly(args.events, args.clients)
    plans = []
    for index, n in enumerate(sent):
        # Duplicates can only be re-sends of events of an earlier batch: none in the first one.
        duplicates = min(round(n * args.duplicate_ratio), max(0, n - args.batch_size))
        plans.append(
            ClientPlan(
                phase=phase,
                single=args.single,
                index=index,
                events=n,
                duplicates=duplicates,
                batch_size=args.batch_size,
                customers=tuple(db["customer_pks"]),
                run_id=run_id,
                seed=args.seed * 1000 + index,
                host="127.0.0.1",
                port=port,
                api_key=api_key,
                request_timeout=args.request_timeout,
                max_seconds=args.max_seconds,
                **(db if phase == "db" else {}),
            )
        )
    return plans


def _timestamp(now: datetime, rng: random.Random) -> str:
    instant = now - timedelta(seconds=rng.uniform(0, 3600))
    return instant.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _new_event(plan: ClientPlan, seq: int, now: datetime, rng: random.Random) -> dict[str, Any]:
    code = METERS[seq % len(METERS)][0]
    event: dict[str, Any] = {
        "event_id": f"{plan.prefix}c{plan.index}-{seq:07d}",
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
        event["properties"]["token_type"] = rng.choice(TOKEN_TYPES)
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
        document = batch[0] if plan.single else {"events": batch}
        bodies.append(json.dumps(document, separators=(",", ":")).encode())
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
    _count_sent(report, flags)
    if status != 202:
        report.failures.append(
            f"client {report.index} request {number}: HTTP {status}: {payload[:200]!r}"
        )
        return
    try:
        data = json.loads(payload)
        counts = (data["accepted"], data["duplicates"], data["conflicts"])
        statuses = [item["status"] for item in data["events"]]
    except (ValueError, KeyError, TypeError) as exc:
        report.failures.append(
            f"client {report.index} request {number}: unreadable 202 body ({exc})"
        )
        return
    _check_statuses(report, statuses, flags, counts=counts)


def _count_sent(report: ClientReport, flags: list[bool]) -> None:
    report.requests += 1
    report.events_sent += len(flags)
    dups = sum(flags)
    report.duplicates_sent += dups
    report.unique_sent += len(flags) - dups


def _check_statuses(
    report: ClientReport,
    statuses: list[str],
    flags: list[bool],
    *,
    counts: tuple[int, int, int] | None = None,
) -> None:
    """Add up the outcome (the body's counts if given, else counted) and compare each event's
    status with the one expected: `accepted` for a new event, `duplicate` for a re-send."""
    if counts is None:
        counts = tuple(statuses.count(s) for s in ("accepted", "duplicate", "conflict"))
    report.accepted += counts[0]
    report.duplicates += counts[1]
    report.conflicts += counts[2]
    wanted = ["duplicate" if flag else "accepted" for flag in flags]
    if statuses != wanted:
        report.status_mismatches += sum(1 for a, b in zip(statuses, wanted, strict=False) if a != b)
        report.status_mismatches += abs(len(statuses) - len(wanted))


# --- DB-only client process --------------------------------------------------------------------

# The shared per-customer usage lock every ingestion transaction takes first
# (metering.aggregation.lock_customer_usage; the namespace is read from that module).
_USAGE_LOCK = "SELECT pg_advisory_xact_lock_shared(%s, k) FROM unnest(%s::int[]) AS k ORDER BY k"


def _db_rows(plan: ClientPlan, bodies: list[bytes]) -> list[list[Any]]:
    """The request bodies as the service turns them into rows: parsed, validated, resolved to
    primary keys, fingerprinted (done before the clock starts)."""
    from metering import event_parsing
    from metering.event_store import EventRow

    now = datetime.now(UTC)
    window = {"max_age": timedelta(days=35), "max_future": timedelta(minutes=5)}
    batches: list[list[Any]] = []
    for body in bodies:
        raw_events, _, errors = event_parsing.split_events(event_parsing.decode_body(body))
        if errors:
            raise ValueError(f"invalid body: {errors}")
        rows = []
        for index, raw in enumerate(raw_events):
            event, event_errors = event_parsing.parse_event(raw, index=index, now=now, **window)
            if event is None:
                raise ValueError(f"invalid event: {event_errors}")
            customer_pk = plan.customer_pks[event.customer_id]
            meter_pk, _ = plan.meters[event.meter]
            quantity = event.quantity if event.quantity is not None else Decimal(1)
            rows.append(
                EventRow(
                    index=index,
                    customer_pk=customer_pk,
                    meter_pk=meter_pk,
                    event_id=event.event_id,
                    quantity=quantity,
                    timestamp=event.timestamp,
                    properties_json=event.properties_json,
                    fingerprint=event_parsing.fingerprint(
                        customer_pk=customer_pk, meter_pk=meter_pk, quantity=quantity, event=event
                    ),
                )
            )
        batches.append(rows)
    return batches


def run_db_client(plan: ClientPlan, ready: Any, start: Any, results: Any) -> None:
    """The DB-only phase: the same batches written through one psycopg connection with the
    service's statements, one transaction each, no HTTP and no Django; checked afterwards."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    report = ClientReport(index=plan.index)
    try:
        import psycopg

        from metering import event_store
        from metering.event_store import postgresql as statements

        bodies, expected = build_batches(plan)
        report.body_bytes = sum(len(b) for b in bodies)
        prepared = []
        for rows in _db_rows(plan, bodies):
            first, ordered = event_store.candidates(rows)
            locks = sorted({r.customer_pk & 0x7FFFFFFF for r in ordered})
            prepared.append((rows, first, ordered, locks))
        del bodies
        conn = psycopg.connect(plan.dsn, autocommit=True)
        ready.put(plan.index)
        if not start.wait(timeout=600):
            report.failures.append("start signal never came")
            results.put(report)
            return
        outcomes: list[tuple[int, set[tuple[int, str]], dict[tuple[int, str], str]]] = []
        cpu_before = time.process_time()
        report.first_start = time.monotonic()
        deadline = report.first_start + plan.max_seconds
        for number, (_, first, ordered, locks) in enumerate(prepared):
            if time.monotonic() > deadline:
                report.failures.append(
                    f"deadline reached: {len(prepared) - number} batch(es) not written"
                )
                break
            began = time.monotonic()
            try:
                with conn.transaction(), conn.cursor() as cursor:
                    cursor.execute(_USAGE_LOCK, [plan.lock_namespace, locks])
                    cursor.execute(
                        statements.INSERT_EVENTS,
                        statements.insert_params(
                            ordered, received_at=datetime.now(UTC), api_key_pk=plan.api_key_pk
                        ),
                        prepare=True,  # as the service does
                    )
                    inserted = {(c, e) for c, e in cursor.fetchall()}
                    missing = [key for key in first if key not in inserted]
                    stored: dict[tuple[int, str], str] = {}
                    if missing:
                        cursor.execute(
                            statements.STORED_FINGERPRINTS,
                            statements.fingerprint_params(missing),
                            prepare=True,
                        )
                        stored = {(c, e): f for c, e, f in cursor.fetchall()}
            except psycopg.Error as exc:
                report.failures.append(
                    f"client {plan.index} batch {number}: {type(exc).__name__}: {exc}"
                )
                if conn.closed:
                    break
                continue
            report.latencies.append(time.monotonic() - began)
            outcomes.append((number, inserted, stored))
        report.last_end = time.monotonic()
        report.cpu_s = time.process_time() - cpu_before
        conn.close()
        for number, inserted, stored in outcomes:
            rows, first, _, _ = prepared[number]
            _count_sent(report, expected[number])
            statuses = event_store.statuses(rows, first=first, inserted=inserted, stored=stored)
            _check_statuses(report, [status for _, status in statuses], expected[number])
    except Exception as exc:  # report anything rather than die silently
        report.failures.append(f"client {plan.index} crashed: {type(exc).__name__}: {exc}")
    results.put(report)


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


def release(env: dict[str, str]) -> None:
    """The release steps of docs/deploy.md: collect the static files (production's gunicorn
    refuses to start without them), then migrate."""
    for command, doing in (("collectstatic", "collecting static files"), ("migrate", "migrating")):
        print(f"{doing} ...", file=sys.stderr)
        try:
            subprocess.run(
                [str(VENV_BIN / "python"), "manage.py", command, "--noinput", "-v", "0"],
                cwd=ROOT,
                env=env,
                check=True,
                timeout=300,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise SetupError(f"manage.py {command} failed ({exc}); see its output above") from None


def seed(customers: int, run_id: str) -> tuple[dict[str, int], dict[str, tuple[int, str]], Any]:
    """Customers, meters and a service-wide key, in-process; returns ({external id: pk},
    {meter code: (pk, aggregation)}, (key, plaintext))."""
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
    meters: dict[str, tuple[int, str]] = {}
    for code, name, unit, aggregation in METERS:
        meter, created = Meter.objects.get_or_create(
            code=code, defaults={"name": name, "unit": unit, "aggregation": aggregation}
        )
        if not created and (meter.aggregation != aggregation or not meter.is_active):
            raise SetupError(
                f"meter {code} exists as {meter.aggregation}, active={meter.is_active}"
            )
        meters[code] = (meter.pk, meter.aggregation)
    customer_pks = dict(
        Customer.objects.filter(external_id__in=external_ids).values_list("external_id", "pk")
    )
    return customer_pks, meters, services.create_api_key(name=f"bench {run_id}")


def on_rate_card(customer_pks: dict[str, int]) -> None:
    """--dimensions: subscribe the customers to a plan pricing llm_tokens by model and token
    type (the reads benchmark's rate card), so ingestion groups their rollups."""
    from django.utils import timezone

    from bench.reads import rate_card_price
    from invoicing.demo import DEMO_PRICES
    from invoicing.services import plans, subscriptions
    from metering.models import Customer

    prices = [p if p.meter != "llm_tokens" else rate_card_price() for p in DEMO_PRICES]
    plan = plans.create_plan_version(
        code=f"bench-dims-{secrets.token_hex(3)}",
        name="Bench rate card",
        currency="USD",
        interval="month",
        prices=prices,
    )
    now = timezone.now() - timedelta(hours=2)  # the events go back an hour
    for customer in Customer.objects.filter(pk__in=customer_pks.values()):
        subscriptions.subscribe_customer(customer=customer, plan=plan, now=now)


def stored_count(prefix: str) -> tuple[int, int]:
    """(all rows in the table, rows whose event id starts with prefix)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM metering_usageevent")
        total = cursor.fetchone()[0]
        cursor.execute(
            "SELECT count(*) FROM metering_usageevent WHERE event_id LIKE %s", [f"{prefix}%"]
        )
        ours = cursor.fetchone()[0]
    return total, ours


class Gunicorn:
    """gunicorn in its own session, stopped (TERM, then KILL of its group) on exit."""

    def __init__(
        self, *, port: int, workers: int, threads: int, env: dict[str, str], log: Path
    ) -> None:
        self.port, self.log = port, log
        self._log_file = log.open("wb")
        # Sync workers (the default) close the connection after each response; threaded
        # workers keep it alive between requests.
        worker_class = ["-k", "gthread", "--threads", str(threads)] if threads > 1 else []
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
                *worker_class,
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


class RssSampler(threading.Thread):
    """Samples the resident memory of the gunicorn workers (Linux /proc) through the load."""

    def __init__(self, pids: list[int], interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pids, self.interval = pids, interval
        self.samples: dict[int, list[tuple[float, int]]] = {pid: [] for pid in pids}  # (t, B)
        self._stop_event = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def sample(self) -> None:
        now = time.monotonic()
        for pid in self.pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
                self.samples[pid].append((now, resident * self._page))

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
        self.sample()


# A worker is judged flat when the median of its RSS over the second half of the load exceeds
# the median over the first half (after a 10% warm-up: interpreter caches, the connection, the
# first big batch's allocations) by at most this much. Single samples move by a few MiB with
# whatever request a worker holds when sampled; the medians do not, unless memory is retained.
FLAT_LATE_GROWTH_MIB = 2.0


def rss_summary(
    sampler: RssSampler, *, before: dict[int, int], started: float, ended: float
) -> dict[str, Any]:
    """Per worker: RSS before the load, at its start, peak, at its end, growth over the run,
    the medians and high-water marks of the two halves (MiB), and every sample; `flat` when no
    worker's second-half median exceeds its first-half median by more than
    FLAT_LATE_GROWTH_MIB."""
    mib = 1024 * 1024
    warm, halfway = started + (ended - started) / 10, started + (ended - started) / 2
    workers = []
    for pid, samples in sampler.samples.items():
        during = [(t, b) for t, b in samples if t >= started] or samples[-1:]
        if not during:
            continue
        first_half = [b for t, b in during if warm <= t < halfway] or [during[0][1]]
        second_half = [b for t, b in during if t >= halfway] or [during[-1][1]]
        start, end = during[0][1], during[-1][1]
        late = statistics.median(second_half) - statistics.median(first_half)
        workers.append(
            {
                "pid": pid,
                "before_load_mib": round(before.get(pid, 0) / mib, 1),
                "start_mib": round(start / mib, 1),
                "peak_mib": round(max(b for _, b in during) / mib, 1),
                "end_mib": round(end / mib, 1),
                "growth_mib": round((end - start) / mib, 1),
                "first_half_median_mib": round(statistics.median(first_half) / mib, 1),
                "second_half_median_mib": round(statistics.median(second_half) / mib, 1),
                "first_half_peak_mib": round(max(first_half) / mib, 1),
                "second_half_peak_mib": round(max(second_half) / mib, 1),
                "late_growth_mib": round(late / mib, 1),
                "samples_s_mib": [(round(t - started, 2), round(b / mib, 2)) for t, b in during],
            }
        )
    return {
        "workers": workers,
        "flat_threshold_mib": FLAT_LATE_GROWTH_MIB,
        "flat": bool(workers)
        and all(w["late_growth_mib"] <= FLAT_LATE_GROWTH_MIB for w in workers),
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


def summarise_phase(
    reports: list[ClientReport],
    *,
    phase: str,
    wall: float,
    stored_before: int,
    stored_after: int,
    stored_phase: int,
    planned: list[ClientPlan],
    cpu: dict[str, float],
) -> dict[str, Any]:
    """The figures and checks of one phase (http or db)."""
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
        "no_failures": not failures,  # http: every response 202; db: every commit went through
        "stored_rows_equal_unique": stored == unique and stored_phase == unique,
        "accepted_equal_unique": accepted == unique,
        "duplicates_equal_duplicates_sent": dup_responses == duplicates,
        "no_conflicts": conflicts == 0,
        "per_event_statuses_as_expected": mismatches == 0,
    }
    return {
        "phase": phase,
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
            "p50": round(percentile(latencies, 0.50) * 1000, 2),
            "p90": round(percentile(latencies, 0.90) * 1000, 2),
            "p99": round(percentile(latencies, 0.99) * 1000, 2),
            "max": round(latencies[-1] * 1000, 2) if latencies else 0.0,
            "mean": round(statistics.fmean(latencies) * 1000, 2) if latencies else 0.0,
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
            "rows_with_this_phase_prefix": stored_phase,
        },
        "cpu": {
            **cpu,
            # Server CPU per event sent (gunicorn workers + PostgreSQL): unlike events/s this
            # hardly moves when other jobs share the machine. cpus / it = CPU-bound capacity.
            "server_cpu_us_per_event": round(server_cpu * 1e6 / sent, 1) if sent else 0.0,
            "server_cpu_us_per_request": round(server_cpu * 1e6 / requests, 1) if requests else 0.0,
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


def combine(
    args: argparse.Namespace,
    *,
    run_id: str,
    http: dict[str, Any],
    db: dict[str, Any] | None,
    memory: dict[str, Any],
) -> dict[str, Any]:
    """The run's result: both phases, the ratio HTTP / DB-only, the workers' memory."""
    ratio = (
        round(http["events_per_s"] / db["events_per_s"], 3) if db and db["events_per_s"] else None
    )
    checks = {f"http_{k}": v for k, v in http["checks"].items()}
    checks.update({f"db_only_{k}": v for k, v in (db or {}).get("checks", {}).items()})
    return {
        "benchmark": "ingest-single" if args.single else "ingest",
        "run_id": run_id,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "events": args.events,
            "single": args.single,
            "clients": args.clients,
            "workers": args.workers,
            "threads": args.threads,
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
        "http": http,
        "db_only": db,
        "ratio_http_to_db_only": ratio,
        "memory": memory,
        "checks": checks,
        "ok": all(checks.values()),
    }


def _phase_lines(title: str, r: dict[str, Any], *, unit: str) -> list[str]:
    ok = lambda flag: "OK" if flag else "FAIL"  # noqa: E731
    lat, cpu, checks = r["latency_ms"], r["cpu"], r["checks"]
    failed = "every response 202" if r["phase"].startswith("http") else "every commit went through"
    return [
        title,
        f"  events sent        {r['events_sent']:>12,}   (unique {r['unique_events']:,}, "
        f"duplicates {r['duplicates_sent']:,})",
        f"  {unit + 's':<18} {r['requests']:>12,}   ({r['request_body_mb']} MB of JSON)",
        f"  wall time          {r['wall_time_s']:>12.2f} s",
        f"  events/s           {r['events_per_s']:>12,.0f}   "
        f"(unique {r['unique_events_per_s']:,.0f}/s; {r['requests_per_s']:,.1f} {unit}s/s)",
        f"  latency p50 / p99  {lat['p50']:>8.1f} / {lat['p99']:.1f} ms   "
        f"(p90 {lat['p90']:.1f}, max {lat['max']:.1f}; per {unit})",
        f"  CPU s              gunicorn {cpu['gunicorn_workers_cpu_s']:.1f}, "
        f"postgres {cpu['postgres_cpu_s']:.1f}, clients {cpu['clients_cpu_s']:.1f}, "
        f"other {cpu['other_cpu_s']:.1f}; machine {cpu['machine_busy_pct']:.0f}% busy",
        f"  server CPU         {cpu['server_cpu_us_per_event']:>8.1f} us/event, "
        f"{cpu['server_cpu_us_per_request']:,.0f} us/{unit}   "
        f"(CPU-bound capacity {cpu['cpu_bound_capacity_events_per_s']:,} events/s)",
        f"  stored == unique   {ok(checks['stored_rows_equal_unique'])}   "
        f"({r['stored']['new_rows']:,} new rows)   accepted == unique "
        f"{ok(checks['accepted_equal_unique'])}",
        f"  dups == dups sent  {ok(checks['duplicates_equal_duplicates_sent'])}   "
        f"no conflicts {ok(checks['no_conflicts'])}   per-event statuses "
        f"{ok(checks['per_event_statuses_as_expected'])}",
        f"  {failed:<26} {ok(checks['no_failures'])}   ({r['failure_count']} failure(s))   "
        f"every event sent {ok(checks['all_events_sent'])}",
        *(f"  ! {failure[:150]}" for failure in r["failures"][:10]),
    ]


def print_block(result: dict[str, Any], json_path: Path) -> None:
    c, http, db, memory = result["config"], result["http"], result["db_only"], result["memory"]
    workers = f"{c['workers']} gunicorn workers" + (
        f" x {c['threads']} threads" if c["threads"] > 1 else ""
    )
    shape = "1 event per request" if c["single"] else f"batch {c['batch_size']}"
    lines = [
        "",
        "=" * 78,
        f"{result['benchmark']} benchmark  run {result['run_id']}  "
        f"({c['clients']} clients, {workers}, {shape})",
        "-" * 78,
    ]
    if db:
        lines += _phase_lines(
            "DB-only (psycopg, the service's statements, no HTTP, no Django)", db, unit="commit"
        )
        lines.append("-" * 78)
    lines += _phase_lines("HTTP (gunicorn)", http, unit="request")
    lines.append("-" * 78)
    if result["ratio_http_to_db_only"] is not None:
        lines.append(
            f"ratio HTTP / DB-only events/s   {result['ratio_http_to_db_only']:.3f}   "
            f"({http['events_per_s']:,.0f} / {db['events_per_s']:,.0f})"
        )
    for w in memory["workers"]:
        lines.append(
            f"worker {w['pid']} RSS MiB   start {w['start_mib']:.1f}  peak {w['peak_mib']:.1f}  "
            f"end {w['end_mib']:.1f}   growth {w['growth_mib']:+.1f}; halves: median "
            f"{w['first_half_median_mib']:.1f} -> {w['second_half_median_mib']:.1f} "
            f"({w['late_growth_mib']:+.1f}), peak {w['first_half_peak_mib']:.1f} -> "
            f"{w['second_half_peak_mib']:.1f}"
        )
    lines += [
        f"memory flat (median RSS of the 2nd half <= 1st half's + "
        f"{memory['flat_threshold_mib']:g} MiB, every worker)  "
        f"{'yes' if memory['flat'] else 'NO'}",
        "-" * 78,
        f"RESULT: {'OK' if result['ok'] else 'FAIL'}   -> {json_path.relative_to(ROOT)}",
        "=" * 78,
    ]
    print("\n".join(lines), flush=True)


# --- Main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events",
        type=int,
        help="events sent per phase, dups included (default 1,000,000; 10,000 with --single)",
    )
    parser.add_argument(
        "--single", action="store_true", help="one event per request (a bare event object)"
    )
    parser.add_argument(
        "--clients", type=int, help="concurrent client processes (default 4; 16 with --single)"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument(
        "--threads",
        type=int,
        help="threads per worker, > 1: gthread workers, which keep connections alive "
        "(default 1: sync workers; 4 with --single)",
    )
    parser.add_argument("--batch-size", type=int, default=1000, help="events per request")
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--duplicate-ratio", type=float, default=0.10)
    parser.add_argument("--request-timeout", type=float, default=60.0, help="seconds")
    parser.add_argument(
        "--max-seconds", type=float, default=900.0, help="each phase stops sending after this"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--skip-db-only", action="store_true", help="only the HTTP phase (e.g. when profiling)"
    )
    parser.add_argument(
        "--dimensions",
        action="store_true",
        help="after the HTTP phase, the same events again with the customers on a rate card "
        "(llm_tokens by model x token type): throughput with dimensions vs without",
    )
    parser.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="seconds to wait with gunicorn up before the HTTP phase (to attach a profiler)",
    )
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = 10_000 if args.single else 1_000_000
    if args.clients is None:
        args.clients = 16 if args.single else 4
    if args.threads is None:
        args.threads = 4 if args.single else 1
    if args.single:
        args.batch_size = 1
    if min(args.events, args.clients, args.workers, args.threads, args.customers) < 1:
        parser.error("--events, --clients, --workers, --threads and --customers must be >= 1")
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

    release(env)
    import django

    django.setup()
    from django.db import connections

    from metering import aggregation

    customer_pks, meters, (api_key, plaintext) = seed(args.customers, run_id)
    postmaster = postmaster_pid()
    connections.close_all()

    port = free_port()
    log = RESULTS_DIR / f"gunicorn-{stamp}.log"
    server: Gunicorn | None = None
    ctx = mp.get_context("spawn")
    common = {"run_id": run_id, "port": port, "api_key": plaintext, "customer_pks": customer_pks}
    try:
        server = Gunicorn(port=port, workers=args.workers, threads=args.threads, env=env, log=log)
        server.wait_ready(plaintext)
        workers = server.worker_pids()
        print(
            f"gunicorn pid {server.proc.pid} on 127.0.0.1:{port}, "
            f"workers {workers}; PostgreSQL postmaster pid {postmaster}; "
            f"log {log.relative_to(ROOT)}",
            file=sys.stderr,
        )
        db = None
        if not args.skip_db_only:
            plans = plan_clients(
                args,
                phase="db",
                meters=meters,
                api_key_pk=api_key.pk,
                lock_namespace=aggregation._LOCK_NAMESPACE,
                dsn=os.environ["DATABASE_URL"],
                **common,
            )
            db, _ = run_phase(
                args, plans, ctx=ctx, target=run_db_client, workers=workers, postmaster=postmaster
            )
        if args.hold:
            print(f"holding {args.hold:g} s before the HTTP phase ...", file=sys.stderr)
            time.sleep(args.hold)
        plans = plan_clients(args, phase="http", **common)
        sampler = RssSampler(workers)
        http, memory = run_phase(
            args,
            plans,
            ctx=ctx,
            target=run_client,
            workers=workers,
            postmaster=postmaster,
            sampler=sampler,
        )
        result = combine(args, run_id=run_id, http=http, db=db, memory=memory)
        if args.dimensions:
            # The same events again (other ids), the customers now on a plan whose llm_tokens
            # is a rate card by model and token type: each rollup row is one group.
            on_rate_card(customer_pks)
            connections.close_all()
            plans = plan_clients(args, phase="http-dims", **common)
            dims, _ = run_phase(
                args, plans, ctx=ctx, target=run_client, workers=workers, postmaster=postmaster
            )
            result["http_dimensions"] = dims
            result["dimensions_over_plain"] = round(dims["events_per_s"] / http["events_per_s"], 3)
            result["checks"].update({f"http_dims_{k}": v for k, v in dims["checks"].items()})
            result["ok"] = all(result["checks"].values())
        json_path = RESULTS_DIR / f"ingest-{'single-' if args.single else ''}{stamp}.json"
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        print_block(result, json_path)
        if args.dimensions:
            for line in _phase_lines(
                "HTTP, customers on a rate card (llm_tokens by model x token_type)",
                result["http_dimensions"],
                unit="request",
            ):
                print(line)
            print(
                f"with dimensions / without: {result['dimensions_over_plain']} "
                f"(events/s {result['http_dimensions']['events_per_s']:,.0f} vs "
                f"{http['events_per_s']:,.0f}; server CPU us/event "
                f"{result['http_dimensions']['cpu']['server_cpu_us_per_event']:.1f} vs "
                f"{http['cpu']['server_cpu_us_per_event']:.1f})",
                flush=True,
            )
        return 0 if result["ok"] else 1
    finally:
        if server is not None:
            server.stop()
        connections.close_all()


def run_phase(
    args: argparse.Namespace,
    plans: list[ClientPlan],
    *,
    ctx: Any,
    target: Any,
    workers: list[int],
    postmaster: int | None,
    sampler: RssSampler | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start the phase's clients, let them build their data, start them together, collect
    their reports, count the stored rows; returns (the phase's figures, memory figures)."""
    from django.db import connections

    phase = plans[0].phase
    stored_before, _ = stored_count(plans[0].prefix)
    connections.close_all()
    procs: list[mp.Process] = []
    try:
        ready, start, results = ctx.Queue(), ctx.Event(), ctx.Queue()
        for plan in plans:
            proc = ctx.Process(target=target, args=(plan, ready, start, results), daemon=True)
            proc.start()
            procs.append(proc)
        print(f"{phase}: {len(plans)} clients building their data ...", file=sys.stderr)
        for _ in plans:
            ready.get(timeout=900)
        rss_before: dict[int, int] = {}
        if sampler is not None:
            sampler.sample()
            rss_before = {pid: s[-1][1] for pid, s in sampler.samples.items() if s}
            sampler.start()
        cpu_before = cpu_snapshot()
        started = time.monotonic()
        start.set()
        print(f"{phase}: load started", file=sys.stderr)

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
        memory: dict[str, Any] = {}
        if sampler is not None:
            sampler.stop()
            memory = rss_summary(sampler, before=rss_before, started=started, ended=ended)
        wall = ended - started
        for proc in procs:
            proc.join(timeout=5)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
    stored_after, stored_phase = stored_count(plans[0].prefix)
    connections.close_all()
    figures = summarise_phase(
        reports,
        phase=phase,
        wall=wall,
        stored_before=stored_before,
        stored_after=stored_after,
        stored_phase=stored_phase,
        planned=plans,
        cpu=cpu_breakdown(cpu_before, cpu_after, workers=workers, postmaster=postmaster, wall=wall),
    )
    return figures, memory


if __name__ == "__main__":
    sys.exit(main())
