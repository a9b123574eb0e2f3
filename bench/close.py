#!/usr/bin/env python
"""Benchmark: close the billing periods of many customers holding many events, on PostgreSQL.

    .venv/bin/python scripts/with_postgres.py --durable -- .venv/bin/python bench/close.py
        [--customers 10000] [--events 1000000] [--workers 1 2] [--runs 3] [--batch-size N]

Builds the data set once, directly in SQL, in a database used as a template (customers on an
hourly plan, events spread over the first hour on three meters, quantities differing from
customer to customer, then VACUUM ANALYZE as autovacuum would have done by closing time).
Each run then closes a fresh copy of it (CREATE DATABASE ... TEMPLATE): the real close
(`close_due_periods`, as beat calls it) in W child processes at once (the row locks make them
share the work), timed from their start to the last one's exit. Runs alternate between the
worker counts, so both see the same machine load, and every run is checked: one invoice per
customer and per period, every event billed by exactly one aggregate, billed quantity per
meter == the events' quantity, a line per aggregate, invoice totals == the sum of their
lines. On the same copy, the aggregation query alone (the SQL floor of the close) is timed
too. Prints each run, then min/median/max per worker count, and writes everything to
bench/results/close-<timestamp>.json. Exit status 0 only if every check of every run passed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_project.settings")

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
CLOSE_AT = T0 + timedelta(hours=1, minutes=1)  # one minute after the first period ends
TEMPLATE_DB = "close_bench_data"
RUN_DB = "close_bench_run"

# The child: what beat runs, in a fresh process, reporting its own time, CPU and peak memory.
CHILD = """
import json, resource, sys, time
t = time.perf_counter()
import django
django.setup()
from datetime import datetime
from invoicing.services.closing import close_due_periods
setup = time.perf_counter() - t
kwargs = {"now": datetime.fromisoformat(sys.argv[1])}
if sys.argv[2] != "0":
    kwargs["batch_size"] = int(sys.argv[2])
t = time.perf_counter()
report = close_due_periods(**kwargs)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "setup_seconds": setup,
    "close_seconds": time.perf_counter() - t,
    "closed": len(report.closed),
    "failed": len(report.failed),
    "cpu_seconds": usage.ru_utime + usage.ru_stime,
    "max_rss_mib": usage.ru_maxrss / 1024,
}))
"""


def database_url(base: str, name: str) -> str:
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{name}"))


def admin_execute(base_url: str, *statements: str) -> None:
    """Run statements on the server's maintenance database (CREATE/DROP DATABASE)."""
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def setup_data(customers: int, events: int, *, dimensions: bool = False) -> None:
    """Migrate the database DATABASE_URL names and fill it (Django, then plain SQL)."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from invoicing.demo import DEMO_PRICES
    from invoicing.services import plans
    from metering.models import Meter

    call_command("migrate", verbosity=0)
    for code, unit, aggregation in (
        ("agent_tasks", "task", "count"),
        ("llm_tokens", "token", "sum"),
        ("agent_minutes", "minute", "sum"),
    ):
        Meter.objects.get_or_create(
            code=code, defaults={"name": code, "unit": unit, "aggregation": aggregation}
        )
    prices = DEMO_PRICES
    properties = "'{}'"
    if dimensions:
        # llm_tokens on the reads benchmark's rate card; every event carries a model (of 20)
        # and a token type (of 3): each customer's llm_tokens close as 60 groups.
        from bench.reads import rate_card_price

        prices = [p if p.meter != "llm_tokens" else rate_card_price() for p in DEMO_PRICES]
        properties = (
            "jsonb_build_object('model', 'm' || (g %% 20), 'token_type',"
            " (ARRAY['input', 'output', 'cached'])[1 + ((g / 20) %% 3)])"
        )
    plan = plans.create_plan_version(
        code="bench", name="Bench", currency="USD", interval="hour", prices=prices
    )
    meter_ids = list(Meter.objects.order_by("code").values_list("pk", flat=True))
    per_customer = events // customers
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO metering_customer (external_id, name, emails, currency, timezone, status,"
            " created_at, updated_at) SELECT 'c' || g, 'Customer ' || g, '[]', 'USD', 'UTC',"
            " 'active', now(), now() FROM generate_series(1, %s) g",
            [customers],
        )
        cursor.execute(
            "INSERT INTO invoicing_subscription (customer_id, plan_id, anchor, started_at,"
            " periods_until, created_at, updated_at) SELECT id, %s, %s, %s, %s, now(), now()"
            " FROM metering_customer",
            [plan.pk, T0, T0, T0 + timedelta(hours=1)],
        )
        cursor.execute(
            'INSERT INTO invoicing_billingperiod (customer_id, plan_id, start, "end", status,'
            " created_at) SELECT id, %s, %s, %s, 'open', now() FROM metering_customer",
            [plan.pk, T0, T0 + timedelta(hours=1)],
        )
        cursor.execute(
            "INSERT INTO metering_usageevent (customer_id, meter_id, event_id, quantity,"  # noqa: S608 - our own fragment
            " timestamp, properties, fingerprint, received_at)"
            " SELECT c.id, (%s::bigint[])[1 + (g %% 3)], 'e' || g, ((g * 31 + c.id) %% 997) + 0.5,"
            f" %s::timestamptz + (g %% 3600) * interval '1 second', {properties}, md5(g::text),"
            " now()"
            " FROM metering_customer c, generate_series(1, %s) g",
            [meter_ids, T0, per_customer],
        )
    with connection.cursor() as cursor:  # outside a transaction: VACUUM refuses one
        cursor.execute("VACUUM ANALYZE")
    connection.close()


# --- CPU accounting (Linux /proc; zeros elsewhere) ------------------------------------------


def cpu_snapshot() -> dict[str, Any]:
    """Machine ticks (busy, total) and each process's (parent, own ticks, reaped children's)."""
    snapshot: dict[str, Any] = {"busy": 0, "total": 0, "processes": {}}
    with contextlib.suppress(OSError):
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        snapshot["total"] = sum(fields[:8])
        snapshot["busy"] = snapshot["total"] - fields[3] - fields[4]  # minus idle, iowait
    for entry in Path("/proc").iterdir() if Path("/proc/stat").exists() else []:
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                raw = (entry / "stat").read_text()
                rest = raw[raw.rindex(")") + 2 :].split()
                snapshot["processes"][int(entry.name)] = (
                    int(rest[1]),
                    int(rest[11]) + int(rest[12]),
                    int(rest[13]) + int(rest[14]),
                )
    return snapshot


def postmaster_pid() -> int | None:
    """The local PostgreSQL server's pid (scripts/with_postgres.py exports its data dir)."""
    data_dir = os.environ.get("BILLING_TEST_PG_DATA")
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((Path(data_dir or "") / "postmaster.pid").read_text().split()[0])
    return None


def postgres_cpu_seconds(before: dict, after: dict, postmaster: int | None) -> float:
    """CPU used by our server: the postmaster, its live children, and those it reaped."""
    if postmaster is None or postmaster not in after["processes"]:
        return 0.0
    ticks = 0
    for pid, (ppid, own, _) in after["processes"].items():
        if postmaster in (pid, ppid):
            ticks += own - before["processes"].get(pid, (0, 0, 0))[1]
    ticks += after["processes"][postmaster][2] - before["processes"][postmaster][2]
    return ticks / os.sysconf("SC_CLK_TCK")


# --- One run ---------------------------------------------------------------------------------


def close_once(url: str, workers: int, batch_size: int) -> dict[str, Any]:
    """Close every due period of the database at `url` with `workers` processes at once."""
    env = dict(os.environ, DATABASE_URL=url, BILLING_GRACE_PERIOD="0", PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-c", CHILD, CLOSE_AT.isoformat(), str(batch_size)]
    postmaster = postmaster_pid()
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else ""
    before = cpu_snapshot()
    started = time.perf_counter()
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, cwd=ROOT) for _ in range(workers)
    ]
    outputs = [p.communicate(timeout=1800)[0] for p in procs]
    wall = time.perf_counter() - started
    after = cpu_snapshot()
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a closer exited with {[p.returncode for p in procs]}")
    children = [json.loads(out) for out in outputs]
    hz = os.sysconf("SC_CLK_TCK") if before["total"] else 1
    busy = (after["busy"] - before["busy"]) / hz
    closers_cpu = sum(c["cpu_seconds"] for c in children)
    postgres_cpu = postgres_cpu_seconds(before, after, postmaster)
    return {
        "workers": workers,
        "wall_seconds": wall,
        "close_seconds_max": max(c["close_seconds"] for c in children),
        "django_setup_seconds": max(c["setup_seconds"] for c in children),
        "closed": sum(c["closed"] for c in children),
        "closed_by_worker": [c["closed"] for c in children],
        "failed": sum(c["failed"] for c in children),
        "peak_rss_mib": max(c["max_rss_mib"] for c in children),
        "loadavg_1min_before": load,
        "machine_busy_pct": round(
            100 * (after["busy"] - before["busy"]) / max(after["total"] - before["total"], 1), 1
        ),
        "closers_cpu_s": round(closers_cpu, 2),
        "postgres_cpu_s": round(postgres_cpu, 2),
        # Everything else the machine did meanwhile: other people's jobs.
        "other_cpu_s": round(max(busy - closers_cpu - postgres_cpu, 0.0), 2),
    }


def aggregation_alone(cursor: Any) -> float:
    """Seconds for the close's aggregation as one bare SQL query, rows fetched (warm cache)."""
    started = time.perf_counter()
    cursor.execute(
        "SELECT customer_id, meter_id, sum(quantity), count(*), max(quantity), min(timestamp),"
        " max(timestamp) FROM metering_usageevent WHERE timestamp >= %s AND timestamp < %s"
        " GROUP BY customer_id, meter_id",
        [T0, T0 + timedelta(hours=1)],
    )
    cursor.fetchall()
    return time.perf_counter() - started


def verify(cursor: Any, customers: int) -> dict[str, Any]:
    """The checks of one run, straight from the tables."""

    def one(sql: str) -> Any:
        cursor.execute(sql)
        return cursor.fetchone()[0]

    events = one("SELECT count(*) FROM metering_usageevent")
    # Each event against the aggregates that cover it: (window, id range], same meter.
    cursor.execute(
        "SELECT count(*) FILTER (WHERE n = 0), count(*) FILTER (WHERE n > 1) FROM ("
        " SELECT count(a.id) AS n FROM metering_usageevent e"
        " LEFT JOIN metering_usageaggregate a ON a.customer_id = e.customer_id"
        "  AND a.meter_id = e.meter_id AND e.timestamp >= a.window_start"
        "  AND e.timestamp < a.window_end AND e.id > a.event_pk_after"
        "  AND e.id <= a.event_pk_through"
        # a rate card's aggregate is one group of values (the two dimensions of --dimensions)
        "  AND (a.dimensions IS NULL OR ("
        "   a.dimensions ->> 'model' IS NOT DISTINCT FROM e.properties ->> 'model'"
        "   AND a.dimensions ->> 'token_type' IS NOT DISTINCT FROM e.properties ->> 'token_type'))"
        " GROUP BY e.id) per_event"
    )
    unbilled, billed_twice = cursor.fetchone()
    # Billed quantity per meter (usage lines) against the events, by the meter's aggregation.
    cursor.execute(
        "SELECT m.code, (SELECT CASE WHEN m.aggregation = 'count' THEN count(*)"
        "  ELSE sum(e.quantity) END FROM metering_usageevent e WHERE e.meter_id = m.id),"
        " (SELECT coalesce(sum(l.quantity), 0) FROM invoicing_invoiceline l"
        "  WHERE l.meter_id = m.id AND l.kind = 'usage')"
        " FROM metering_meter m WHERE m.aggregation IN ('sum', 'count') ORDER BY m.code"
    )
    quantities = {code: (inserted, billed) for code, inserted, billed in cursor}
    invoices = one("SELECT count(*) FROM invoicing_invoice")
    return {
        "invoices": invoices,
        "one_invoice_per_customer": invoices == customers
        and one("SELECT count(DISTINCT customer_id) FROM invoicing_invoice") == customers,
        "one_invoice_per_period": one(
            "SELECT count(*) FROM invoicing_billingperiod p WHERE p.status = 'closed' AND"
            " (SELECT count(*) FROM invoicing_invoice i WHERE i.period_id = p.id) <> 1"
        )
        == 0,
        "events": events,
        "unbilled_events": unbilled,
        "events_billed_twice": billed_twice,
        "billed_quantity_equals_events": all(
            inserted is not None and inserted == billed  # exact: int and Decimal
            for inserted, billed in quantities.values()
        ),
        "quantities": {code: [str(i), str(b)] for code, (i, b) in quantities.items()},
        "aggregates_without_one_line": one(
            "SELECT count(*) FROM metering_usageaggregate a WHERE NOT EXISTS"
            " (SELECT 1 FROM invoicing_invoiceline l WHERE l.aggregate_id = a.id)"
        ),
        "totals_equal_lines": one(
            "SELECT count(*) FROM invoicing_invoice i WHERE i.total_minor <>"
            " (SELECT coalesce(sum(amount_minor), 0) FROM invoicing_invoiceline l"
            "  WHERE l.invoice_id = i.id)"
        )
        == 0,
    }


def checks_pass(run: dict[str, Any]) -> bool:
    c = run["checks"]
    return bool(
        c["one_invoice_per_customer"]
        and c["one_invoice_per_period"]
        and c["unbilled_events"] == 0
        and c["events_billed_twice"] == 0
        and c["billed_quantity_equals_events"]
        and c["aggregates_without_one_line"] == 0
        and c["totals_equal_lines"]
        and run["failed"] == 0
    )


def run_once(base_url: str, customers: int, workers: int, batch_size: int) -> dict[str, Any]:
    """A fresh copy of the data set, closed, checked, timed alone, dropped."""
    import psycopg

    # FILE_COPY (PostgreSQL 15+) copies the files, not a WAL record per page, and the
    # CHECKPOINT flushes the copy: the close does not pay for its own setup.
    admin_execute(
        base_url,
        f"DROP DATABASE IF EXISTS {RUN_DB}",
        f"CREATE DATABASE {RUN_DB} TEMPLATE {TEMPLATE_DB} STRATEGY FILE_COPY",
        "CHECKPOINT",
    )
    url = database_url(base_url, RUN_DB)
    try:
        result = close_once(url, workers, batch_size)
        with psycopg.connect(url) as conn, conn.cursor() as cursor:
            result["checks"] = verify(cursor, customers)
            result["aggregation_alone_seconds"] = aggregation_alone(cursor)
    finally:
        admin_execute(base_url, f"DROP DATABASE IF EXISTS {RUN_DB}")
    result["ok"] = checks_pass(result)
    return result


# --- Reporting -------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
    }


def summarize(runs: list[dict[str, Any]], workers: list[int]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for w in workers:
        mine = [r for r in runs if r["workers"] == w]
        summary[f"workers_{w}"] = {
            "runs": len(mine),
            "wall_seconds": spread([r["wall_seconds"] for r in mine]),
            "peak_rss_mib": spread([r["peak_rss_mib"] for r in mine]),
            "machine_busy_pct": spread([r["machine_busy_pct"] for r in mine]),
            "other_cpu_s": spread([r["other_cpu_s"] for r in mine]),
        }
    agg = [r["aggregation_alone_seconds"] for r in runs]
    summary["aggregation_alone_seconds"] = spread(agg)
    first = [r["wall_seconds"] for r in runs if r["workers"] == workers[0]]
    summary[f"aggregation_alone_over_close_{workers[0]}w"] = round(
        statistics.median(agg) / statistics.median(first), 3
    )
    for w in workers[1:]:
        other = [r["wall_seconds"] for r in runs if r["workers"] == w]
        summary[f"speedup_{workers[0]}w_over_{w}w"] = round(
            statistics.median(first) / statistics.median(other), 2
        )
    return summary


def print_run(n: int, r: dict[str, Any]) -> None:
    c = r["checks"]
    print(
        f"run {n:2} workers={r['workers']} wall {r['wall_seconds']:6.2f} s"
        f" (close {r['close_seconds_max']:6.2f} s + django setup"
        f" {r['django_setup_seconds']:4.2f} s) peak RSS {r['peak_rss_mib']:6.1f} MiB"
        f" | closed {r['closed']} {r['closed_by_worker']} failed {r['failed']}"
        f" | load {r['loadavg_1min_before']} busy {r['machine_busy_pct']}%"
        f" cpu: closers {r['closers_cpu_s']} s postgres {r['postgres_cpu_s']} s"
        f" other {r['other_cpu_s']} s | aggregation alone {r['aggregation_alone_seconds']:.2f} s"
        f" | invoices {c['invoices']} unbilled {c['unbilled_events']}"
        f" twice {c['events_billed_twice']} | {'OK' if r['ok'] else 'CHECKS FAILED'}",
        flush=True,
    )


def git_state() -> dict[str, Any]:
    def git(*argv: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                ["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
            )
            return done.stdout.strip()
        return ""

    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--", ".", ":!bench")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="worker counts compared"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per worker count")
    parser.add_argument(
        "--dimensions",
        action="store_true",
        help="llm_tokens on a rate card by model x token type (20 x 3 values on its events)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=0, help="periods per transaction (0: the default)"
    )
    args = parser.parse_args()
    base_url = os.environ.get("DATABASE_URL", "")
    if not base_url.startswith(("postgres://", "postgresql://")):
        print("run under scripts/with_postgres.py (or set DATABASE_URL to PostgreSQL)")
        return 2

    admin_execute(
        base_url,
        f"DROP DATABASE IF EXISTS {RUN_DB}",
        f"DROP DATABASE IF EXISTS {TEMPLATE_DB}",
        f"CREATE DATABASE {TEMPLATE_DB}",
    )
    runs: list[dict[str, Any]] = []
    try:
        os.environ["DATABASE_URL"] = database_url(base_url, TEMPLATE_DB)
        started = time.perf_counter()
        setup_data(args.customers, args.events, dimensions=args.dimensions)
        setup_seconds = time.perf_counter() - started
        print(
            f"data set: {args.customers} customers, {args.events} events,"
            f" built in {setup_seconds:.1f} s",
            flush=True,
        )
        for _ in range(args.runs):
            for workers in args.workers:
                runs.append(run_once(base_url, args.customers, workers, args.batch_size))
                print_run(len(runs), runs[-1])
    finally:
        os.environ["DATABASE_URL"] = base_url
        admin_execute(base_url, f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")

    summary = summarize(runs, args.workers)
    print()
    for w in args.workers:
        s = summary[f"workers_{w}"]
        print(
            f"{w} worker(s), {s['runs']} runs: wall min/median/max"
            f" {s['wall_seconds']['min']}/{s['wall_seconds']['median']}/"
            f"{s['wall_seconds']['max']} s, peak RSS {s['peak_rss_mib']['min']}/"
            f"{s['peak_rss_mib']['median']}/{s['peak_rss_mib']['max']} MiB,"
            f" machine busy {s['machine_busy_pct']['median']}% (median),"
            f" other jobs' CPU {s['other_cpu_s']['median']} s (median)"
        )
    for key, value in summary.items():
        if not key.startswith("workers_"):
            print(f"{key:36} {value}")
    ok = all(r["ok"] for r in runs)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"close-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(
        json.dumps(
            {
                "customers": args.customers,
                "events": args.events,
                "dimensions": args.dimensions,
                "workers": args.workers,
                "batch_size": args.batch_size or "default",
                "setup_seconds": round(setup_seconds, 1),
                **git_state(),
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
    )
    print(f"written to {path.relative_to(ROOT)}")
    print("CHECKS OK" if ok else "CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
