#!/usr/bin/env python
"""Benchmark: "how much so far?" with many events stored, on PostgreSQL.

    python scripts/with_postgres.py --durable -- python bench/reads.py [--events 10000000]
        [--customers 1000] [--requests 200] [--cold-requests 30] [--breakdown-cold 5]
        [--repeat 3]

Loads the events directly in SQL (spread over the current month for `--customers` customers
on a monthly plan, with a hot customer holding 10% of them): the indexes and unique
constraints of the events, key and rollup tables are dropped first and rebuilt after the
load, foreign-key triggers are skipped (the generated ids are valid by construction), the
hourly rollups are built from the events as ingestion would have, then VACUUM ANALYZE. It
then times, through Django's full request cycle (middleware, authentication, views,
rendering; no network), the allowance endpoint, the usage API, the portal dashboard and the
dashboard's property breakdown fragment for the hot customer: the first request after the
load, `--cold-requests` requests each after clearing Django's cache (the breakdown's
one-minute cache is the only cache on these paths; `--breakdown-cold` requests for the
breakdown, which takes seconds uncached), and `--requests` warm ones. For the
ratio, the same run times the usage figure computed from the raw events and from the
rollups. `--repeat` repeats the timings (not the load) and prints min/median/max over the
repeats. Beside the wall-clock percentiles it prints the CPU ms per request of this process
plus its PostgreSQL backend, and the machine's load average and CPU use during each round:
other jobs on the box slow the wall-clock figures, the CPU per request and the ratio much
less. Exit status 0 when every read's p95 is under 50 ms in every round, cold and warm.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_project.settings")

TARGET_MS = 50  # the p95 every read must stay under (the "Scale" issue)
READS = ("allowance", "usage_api", "dashboard")  # the three reads of the target
# Tables whose indexes and unique constraints are rebuilt after the bulk load.
BULK_TABLES = ("metering_usageevent", "metering_usageeventkey", "metering_usagerollup")
BYTES_PER_EVENT = 700  # measured ~390 in the database (heap, indexes, keys, rollups), plus WAL


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class MachineLoad:
    """The machine's load over a phase: load averages at its end, all-CPU busy share, and
    the CPU seconds this benchmark process used (the rest is PostgreSQL and other jobs)."""

    def __enter__(self) -> MachineLoad:
        self.ticks = cpu_ticks()
        self.process = time.process_time()
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = cpu_ticks()
        self.busy_percent = 100 * (busy - self.ticks[0]) / max(total - self.ticks[1], 1)
        self.process_cpu_s = time.process_time() - self.process
        self.wall_s = time.perf_counter() - self.wall
        self.loadavg = os.getloadavg()

    def text(self) -> str:
        one, five, fifteen = self.loadavg
        cpus = os.cpu_count() or 1
        return (
            f"load avg {one:.2f} {five:.2f} {fifteen:.2f} ({cpus} CPUs); machine "
            f"{self.busy_percent:.0f}% busy over {self.wall_s:.0f} s, of which this process "
            f"{100 * self.process_cpu_s / max(self.wall_s, 1e-9) / cpus:.0f}%"
        )


def check_disk(events: int) -> None:
    """Refuse to start a load that would fill the disk holding the database."""
    where = os.environ.get("BILLING_TEST_PG_DATA") or tempfile.gettempdir()
    free = shutil.disk_usage(where).free
    needed = events * BYTES_PER_EVENT
    print(f"disk: {free / 2**30:.1f} GiB free at {where}, ~{needed / 2**30:.1f} GiB needed")
    if free < needed * 1.5:
        raise SystemExit(f"not enough disk space for {events} events")


def _drop_indexes(cursor) -> list[str]:
    """Drop the bulk tables' unique constraints and indexes; return the statements that
    recreate them exactly (same names and definitions)."""
    cursor.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = ANY(%s::regclass[]) AND contype IN ('p', 'u')",
        [list(BULK_TABLES)],
    )
    constraints = cursor.fetchall()
    for table, name, _ in constraints:
        cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    cursor.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
        " AND tablename = ANY(%s)",
        [list(BULK_TABLES)],
    )
    indexes = cursor.fetchall()
    for name, _ in indexes:
        cursor.execute(f'DROP INDEX "{name}"')
    # A partitioned table's index reads "ON ONLY" in pg_indexes: recreated as it is, its
    # partitions would have none (and every event read would scan them). Without ONLY it is
    # built on every partition, as the migrations leave it.
    return [definition.replace(" ON ONLY ", " ON ", 1) for _, definition in indexes] + [
        f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}'
        for table, name, definition in constraints
    ]


MODELS = 20  # --dimensions: models x token types on the llm_tokens rate card
TOKEN_TYPES = ("input", "output", "cached")
RATE_CARD_DIMENSIONS = ("model", "token_type")


def rate_card_price():
    """--dimensions: llm_tokens priced by model and token type (a rule per model for its
    output tokens, one per model for the rest: 40 rules, 60 groups)."""
    from decimal import Decimal

    from invoicing.rating import PriceSpec
    from invoicing.services import plans

    rates = []
    for index in range(MODELS):
        unit = Decimal(index + 1) / 1000
        rates.append(
            ({"model": f"m{index}", "token_type": "output"}, PriceSpec("per_unit", unit * 3))
        )
        rates.append(({"model": f"m{index}"}, PriceSpec("per_unit", unit)))
    return plans.PriceInput("llm_tokens", None, dimensions=RATE_CARD_DIMENSIONS, rates=tuple(rates))


def load(events: int, customers: int, *, dimensions: bool = False) -> dict:
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    from invoicing.demo import DEMO_PRICES
    from invoicing.services import plans, subscriptions
    from metering import services
    from metering.dimensions import names_text
    from metering.models import Customer, Meter, PortalMembership

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
    if dimensions:
        prices = [p if p.meter != "llm_tokens" else rate_card_price() for p in DEMO_PRICES]
    plan = plans.create_plan_version(
        code="bench", name="Bench", currency="USD", interval="month", prices=prices
    )
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO metering_customer (external_id, name, emails, currency, timezone,"
            " status, created_at, updated_at) SELECT 'c' || g, 'Customer ' || g, '[]', 'USD',"
            " 'UTC', 'active', now(), now() FROM generate_series(1, %s) g",
            [customers],
        )
    for customer in Customer.objects.all().iterator():
        subscriptions.subscribe_customer(customer=customer, plan=plan, now=now)
    hot = Customer.objects.get(external_id="c1")
    customer_ids = list(Customer.objects.order_by("pk").values_list("pk", flat=True))
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    span = max(int((now - month_start).total_seconds()) - 60, 3600)
    meter_ids = list(Meter.objects.order_by("code").values_list("pk", flat=True))
    tokens = Meter.objects.get(code="llm_tokens").pk
    if dimensions:
        # 20 models x 3 token types, every event: the rate card groups llm_tokens by both.
        properties = (
            "jsonb_build_object('agent_id', 'a' || ((g / 10) %% 50),"
            " 'model', 'm' || ((g / 30) %% 20), 'token_type',"
            " (ARRAY['input', 'output', 'cached'])[1 + ((g / 600) %% 3)])"
        )
    else:
        properties = (
            "jsonb_build_object('agent_id', 'a' || ((g / 10) %% 50), 'model', 'm' || (g %% 4))"
        )
    steps: dict[str, float] = {}

    def step(name: str, sql: str, params: list | None = None) -> None:
        t = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
        steps[name] = round(time.perf_counter() - t, 1)
        print(f"  load: {name:28} {steps[name]:7.1f} s", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    with transaction.atomic():
        with connection.cursor() as cursor:
            # Generated ids are valid by construction: skip the per-row foreign-key triggers.
            cursor.execute("SET LOCAL session_replication_role = replica")
            cursor.execute("SET LOCAL work_mem = '256MB'")
            cursor.execute("SET LOCAL maintenance_work_mem = '1GB'")
            rebuild = _drop_indexes(cursor)
        # 10% of the events belong to the hot customer, the rest spread over all customers;
        # 50 agents, the three meters in turn, timestamps spread over the month so far.
        step(
            "events",
            "INSERT INTO metering_usageevent (customer_id, meter_id, event_id, quantity,"  # noqa: S608 - our own fragment
            " timestamp, properties, fingerprint, received_at)"
            " SELECT CASE WHEN g %% 10 = 0 THEN %s ELSE (%s::bigint[])[1 + (g %% %s)] END,"
            " (%s::bigint[])[1 + (g %% 3)], 'e' || g, (g %% 997) + 0.5,"
            " %s::timestamptz + ((g * 7919) %% %s) * interval '1 second',"
            f" {properties}, md5(g::text), now()"
            " FROM generate_series(1::bigint, %s) g",
            [hot.pk, customer_ids, customers, meter_ids, month_start, span, events],
        )
        step(
            "event keys",
            "INSERT INTO metering_usageeventkey (customer_id, event_id, fingerprint)"
            " SELECT customer_id, event_id, fingerprint FROM metering_usageevent",
        )
        # As ingestion writes them: the llm_tokens rows per group of the rate card's values
        # (--dimensions), with the names and key metering.dimensions gives.
        names = names_text(RATE_CARD_DIMENSIONS) if dimensions else ""
        step(
            "rollups",
            "INSERT INTO metering_usagerollup (customer_id, meter_id, hour, dimension_names,"
            " dim_0, dim_1, dim_2, group_key, quantity,"
            " event_count, max_quantity, latest_at, latest_event_pk, latest_quantity)"
            " SELECT customer_id, meter_id, date_trunc('hour', timestamp, 'UTC'),"
            " CASE WHEN meter_id = %s THEN %s ELSE '' END, d0, d1, NULL,"
            " CASE WHEN meter_id = %s AND %s <> '' THEN encode(sha256(convert_to("
            " '[' || %s || ', [\"' || d0 || '\", \"' || d1 || '\"]]', 'UTF8')), 'hex')"
            " ELSE '' END, sum(quantity),"
            " count(*), max(quantity), max(timestamp),"
            " (array_agg(id ORDER BY timestamp DESC, id DESC))[1],"
            " (array_agg(quantity ORDER BY timestamp DESC, id DESC))[1]"
            " FROM (SELECT *, CASE WHEN meter_id = %s AND %s <> '' THEN properties ->> 'model'"
            " END AS d0, CASE WHEN meter_id = %s AND %s <> '' THEN properties ->> 'token_type'"
            " END AS d1 FROM metering_usageevent) e GROUP BY 1, 2, 3, 5, 6"
            # in hour order, as ingestion writes them: a customer's rollups are spread over
            # the table, not packed together as the grouping would leave them
            " ORDER BY 3, 1, 2",
            [
                tokens,
                names,
                tokens,
                names,
                json.dumps(list(RATE_CARD_DIMENSIONS)),
                tokens,
                names,
                tokens,
                names,
            ],
        )
        t = time.perf_counter()
        for statement in rebuild:
            with connection.cursor() as cursor:
                cursor.execute(statement)
        steps["indexes and constraints"] = round(time.perf_counter() - t, 1)
        print(
            f"  load: {'indexes and constraints':28} {steps['indexes and constraints']:7.1f} s",
            file=sys.stderr,
        )
    with connection.cursor() as cursor:
        t = time.perf_counter()
        cursor.execute("VACUUM ANALYZE")
        steps["vacuum analyze"] = round(time.perf_counter() - t, 1)
        cursor.execute("SELECT pg_database_size(current_database())")
        database_bytes = cursor.fetchone()[0]
    load_seconds = time.perf_counter() - t0
    user = User.objects.create_user("hot", password="bench-password-1")  # noqa: S106
    PortalMembership.objects.create(user=user, customer=hot)
    _, key = services.create_api_key(name="bench")
    return {
        "hot": hot,
        "user": user,
        "key": key,
        "load_seconds": load_seconds,
        "load_steps": steps,
        "database_gib": round(database_bytes / 2**30, 2),
    }


def backend_cpu_seconds() -> float:
    """CPU seconds used so far by this connection's PostgreSQL backend (/proc, same host)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def time_requests(
    client, url: str, n: int, *, cold: bool = False, cpu: dict | None = None, **headers
) -> list[float]:
    """Milliseconds per request; `cold` clears Django's cache before each one (untimed).
    With `cpu`, adds the CPU ms per request of this process plus its PostgreSQL backend:
    what a request costs whatever else runs on the machine."""
    from django.core.cache import cache

    timings = []
    cpu_used = 0.0
    backend_before = backend_cpu_seconds() if cpu is not None else 0.0
    for _ in range(n):
        if cold:
            cache.clear()
        process_before = time.process_time()
        t = time.perf_counter()
        response = client.get(url, **headers)
        timings.append((time.perf_counter() - t) * 1000)
        cpu_used += time.process_time() - process_before
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code} {response.content[:300]!r}")
    if cpu is not None:
        cpu_used += backend_cpu_seconds() - backend_before  # cache.clear() uses none of it
        cpu["cpu_ms"] = round(cpu_used * 1000 / n, 1)
    return timings


def summary(timings: list[float], cpu: dict) -> dict[str, float]:
    return {
        **cpu,
        "p50": round(statistics.median(timings), 1),
        "p95": round(percentile(timings, 0.95), 1),
        "p99": round(percentile(timings, 0.99), 1),
        "max": round(max(timings), 1),
    }


def measure(client, endpoints: dict, hot, args) -> dict:
    """One round of timings: every read cold then warm, then the events/rollups ratio."""
    from invoicing.pricing import price_dimensions
    from invoicing.selectors import period_price_specs
    from invoicing.services import subscriptions
    from metering import aggregation
    from metering.models import Meter

    results: dict = {}
    with MachineLoad() as machine:
        for name, (url, headers) in endpoints.items():
            cold = args.cold_requests if name in READS else args.breakdown_cold
            cpu: dict = {}
            timings = time_requests(client, url, cold, cold=True, cpu=cpu, **headers)
            results[name] = {"cold": summary(timings, cpu)}
            time_requests(client, url, 5, **headers)  # warm-up
            timings = time_requests(client, url, args.requests, cpu=cpu, **headers)
            results[name]["warm"] = summary(timings, cpu)
        # the same usage figure from raw events and from rollups, for the ratio
        # (per group of the rate card's values with --dimensions)
        period = subscriptions.current_period(customer=hot, now=datetime.now(UTC))
        meters = {m.pk: m for m in Meter.objects.all()}
        window = {"customer_id": hot.pk, "start": period.start, "end": period.end, "meters": meters}
        grouped = {"dimensions": price_dimensions(period_price_specs(period=period))}
        t_events, t_rollups = [], []
        for _ in range(5):
            t = time.perf_counter()
            from_events = aggregation.summarize_window_groups(**window, **grouped)
            t_events.append((time.perf_counter() - t) * 1000)
        for _ in range(20):
            t = time.perf_counter()
            from_rollups = aggregation.window_group_quantities(**window, **grouped)
            t_rollups.append((time.perf_counter() - t) * 1000)
        results["groups"] = len(from_rollups)
        results["dimensions"] = {
            meters[pk].code: names for pk, names in grouped["dimensions"].items()
        }
    results["usage_from_events_median_ms"] = round(statistics.median(t_events), 1)
    results["usage_from_rollups_median_ms"] = round(statistics.median(t_rollups), 2)
    results["events_over_rollups_ratio"] = round(
        statistics.median(t_events) / statistics.median(t_rollups), 1
    )
    results["rollups_equal_events"] = {
        k: v.quantity for k, v in from_events.items()
    } == from_rollups
    results["machine"] = machine.text()
    results["loadavg"] = machine.loadavg
    results["machine_busy_percent"] = round(machine.busy_percent)
    return results


def print_round(index: int, results: dict) -> None:
    print(f"\nround {index}: {results['machine']}")
    print(f"  {'read':12} {'':5} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8} {'CPU/req':>8}  (ms)")
    for name in (*READS, "breakdown"):
        for kind in ("cold", "warm"):
            row = results[name][kind]
            print(
                f"  {name:12} {kind:5} {row['p50']:8.1f} {row['p95']:8.1f} {row['p99']:8.1f}"
                f" {row['max']:8.1f} {row['cpu_ms']:8.1f}"
            )
    print(
        f"  usage from events {results['usage_from_events_median_ms']} ms, from rollups"
        f" {results['usage_from_rollups_median_ms']} ms: ratio"
        f" {results['events_over_rollups_ratio']}x; rollups equal events:"
        f" {results['rollups_equal_events']} ({results['groups']} groups;"
        f" by {results['dimensions']})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200, help="warm requests per read")
    parser.add_argument("--cold-requests", type=int, default=30, help="cold requests per read")
    parser.add_argument(
        "--breakdown-cold", type=int, default=5, help="cold requests of the breakdown (slow)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timing rounds after one load")
    parser.add_argument(
        "--dimensions",
        action="store_true",
        help="llm_tokens on a rate card by model and token type (20 x 3 values on every event);"
        " the breakdown is by model, a priced dimension",
    )
    args = parser.parse_args()
    if "postgres" not in os.environ.get("DATABASE_URL", ""):
        print("run under scripts/with_postgres.py (or set DATABASE_URL to PostgreSQL)")
        return 2
    check_disk(args.events)
    # A private cache directory (cleared for the cold requests) and no rate limit: the
    # benchmark reads far more often than the per-key limit allows.
    var_dir = tempfile.mkdtemp(prefix="bench-reads-")
    os.environ["BILLING_VAR_DIR"] = var_dir
    os.environ["BILLING_RATE_LIMIT_READS"] = "off"
    # As production runs: no query log, and no test instrumentation of template rendering
    # (setup_test_environment is not called: the test client's host is allowed outside
    # production settings).
    os.environ["DEBUG"] = "false"
    os.environ.pop("CACHE_URL", None)
    os.environ.pop("REDIS_URL", None)
    try:
        return run(args)
    finally:
        shutil.rmtree(var_dir, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    import django

    django.setup()
    from django.test import Client

    from metering.models import UsageEvent

    before = os.getloadavg()
    data = load(args.events, args.customers, dimensions=args.dimensions)
    hot = data["hot"]
    breakdown = "model" if args.dimensions else "agent_id"
    auth = {"HTTP_AUTHORIZATION": f"Bearer {data['key']}"}
    client = Client()
    client.force_login(data["user"])
    endpoints = {
        "allowance": (f"/api/v1/customers/{hot.external_id}/allowance", auth),
        "usage_api": (f"/api/v1/customers/{hot.external_id}/usage", auth),
        "dashboard": ("/portal/", {}),
        # by a priced dimension (from rollups) with --dimensions, else by a property (events)
        "breakdown": (f"/portal/breakdown/?property={breakdown}&fragment=1", {}),
    }
    results: dict = {
        "dimensions": args.dimensions,
        "events_stored": UsageEvent.objects.count(),
        "hot_customer_events": UsageEvent.objects.filter(customer=hot).count(),
        "load_seconds": round(data["load_seconds"], 1),
        "load_steps": data["load_steps"],
        "database_gib": data["database_gib"],
        "loadavg_before_load": before,
    }
    for key in ("events_stored", "hot_customer_events", "load_seconds", "database_gib"):
        print(f"{key:24} {results[key]}")
    # The first request of each read after the load: nothing cached anywhere in the process.
    results["first_request_ms"] = {
        name: round(time_requests(client, url, 1, **headers)[0], 1)
        for name, (url, headers) in endpoints.items()
    }
    print(f"first request (ms)       {results['first_request_ms']}")
    rounds = []
    for index in range(1, args.repeat + 1):
        rounds.append(measure(client, endpoints, hot, args))
        print_round(index, rounds[-1])
    results["rounds"] = rounds
    print(f"\nover {len(rounds)} rounds: min / median / max (ms)")
    ok = all(r["rollups_equal_events"] for r in rounds)
    for name in (*READS, "breakdown"):
        for kind in ("cold", "warm"):
            cells = []
            for figure in ("p50", "p95", "p99", "cpu_ms"):
                values = [r[name][kind][figure] for r in rounds]
                cells.append(
                    f"{figure} {min(values):.1f} / {statistics.median(values):.1f} /"
                    f" {max(values):.1f}"
                )
                if figure == "p95" and name in READS:
                    ok = ok and max(values) < TARGET_MS
            print(f"  {name:12} {kind:5} " + "   ".join(cells))
    ratios = [r["events_over_rollups_ratio"] for r in rounds]
    print(f"  events/rollups ratio  {min(ratios)} {statistics.median(ratios)} {max(ratios)}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (out / f"reads-{stamp}.json").write_text(json.dumps(results, indent=2, default=str))
    print(
        f"TARGET MET (p95 < {TARGET_MS} ms, cold and warm)" if ok else "TARGET NOT MET",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
