#!/usr/bin/env python
"""Benchmark: close the billing periods of many customers holding many events, on PostgreSQL.

    python scripts/with_postgres.py --durable -- python bench/close.py [--customers 10000]
        [--events 1000000] [--workers 1]

Builds the data set directly in SQL (customers on an hourly plan, events spread over the
first hour), then runs the real close (`close_due_periods`, as beat does) in a child process
and reports wall time and that process's peak memory (max RSS). With --workers N, N processes
close concurrently (the row locks make them share the work). Checks afterwards: one invoice
per customer, every event billed exactly once, billed quantity == inserted quantity.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_project.settings")

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def setup_data(customers: int, events: int) -> None:
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
    plan = plans.create_plan_version(
        code="bench", name="Bench", currency="USD", interval="hour", prices=DEMO_PRICES
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
            "INSERT INTO invoicing_billingperiod (customer_id, plan_id, start, \"end\", status,"
            " created_at) SELECT id, %s, %s, %s, 'open', now() FROM metering_customer",
            [plan.pk, T0, T0 + timedelta(hours=1)],
        )
        cursor.execute(
            "INSERT INTO metering_usageevent (customer_id, meter_id, event_id, quantity,"
            " timestamp, properties, fingerprint, received_at)"
            " SELECT c.id, (%s::bigint[])[1 + (g %% 3)], 'e' || g, (g %% 997) + 0.5,"
            " %s::timestamptz + (g %% 3600) * interval '1 second', '{}', md5(g::text), now()"
            " FROM metering_customer c, generate_series(1, %s) g",
            [meter_ids, T0, per_customer],
        )
        cursor.execute("ANALYZE")


def close(workers: int) -> dict:
    code = (
        "import django, json, resource, time;"
        "django.setup();"
        "from datetime import timedelta;"
        "from bench.close import T0;"
        "from invoicing.services.closing import close_due_periods;"
        "t = time.perf_counter();"
        "r = close_due_periods(now=T0 + timedelta(hours=1, minutes=1));"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'closed': len(r.closed),"
        " 'failed': len(r.failed),"
        " 'max_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
    )
    env = dict(os.environ, BILLING_GRACE_PERIOD="0", PYTHONPATH=str(ROOT))
    started = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, cwd=ROOT)
        for _ in range(workers)
    ]
    results = [json.loads(p.communicate(timeout=1800)[0]) for p in procs]
    return {
        "wall_seconds": time.perf_counter() - started,
        "closed": sum(r["closed"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "max_rss_mib": max(r["max_rss_mib"] for r in results),
    }


def verify(customers: int) -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM invoicing_invoice")
        invoices = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM metering_usageevent")
        events = cursor.fetchone()[0]
        cursor.execute("SELECT coalesce(sum(event_count), 0) FROM metering_usageaggregate")
        unbilled = events - cursor.fetchone()[0]
        cursor.execute(
            "SELECT (SELECT sum(quantity) FROM metering_usageevent e JOIN metering_meter m"
            "  ON m.id = e.meter_id WHERE m.aggregation = 'sum'),"
            " (SELECT sum(l.quantity) FROM invoicing_invoiceline l JOIN metering_meter m"
            "  ON m.id = l.meter_id WHERE m.aggregation = 'sum' AND l.kind = 'usage')"
        )
        event_sum, line_sum = cursor.fetchone()
    return {
        "invoices": invoices,
        "one_invoice_per_customer": invoices == customers,
        "events": events,
        "unbilled_events": int(unbilled),
        "billed_quantity_equals_events": event_sum == line_sum,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if "postgres" not in os.environ.get("DATABASE_URL", ""):
        print("run under scripts/with_postgres.py (or set DATABASE_URL to PostgreSQL)")
        return 2
    t = time.perf_counter()
    setup_data(args.customers, args.events)
    setup_seconds = time.perf_counter() - t
    result = close(args.workers)
    checks = verify(args.customers)
    figures = {
        "customers": args.customers,
        "events": checks["events"],
        "workers": args.workers,
        "setup_seconds": round(setup_seconds, 1),
        "close_wall_seconds": round(result["wall_seconds"], 2),
        "periods_per_second": round(result["closed"] / result["wall_seconds"], 1),
        "events_per_second": round(checks["events"] / result["wall_seconds"]),
        "peak_rss_mib": round(result["max_rss_mib"], 1),
        "failed": result["failed"],
        **checks,
    }
    for key, value in figures.items():
        print(f"{key:32} {value}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (out / f"close-{stamp}.json").write_text(json.dumps(figures, indent=2))
    ok = (
        checks["one_invoice_per_customer"]
        and checks["unbilled_events"] == 0
        and checks["billed_quantity_equals_events"]
        and result["failed"] == 0
    )
    print("CHECKS OK" if ok else "CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
