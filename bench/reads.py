#!/usr/bin/env python
"""Benchmark: "how much so far?" with many events stored, on PostgreSQL.

    python scripts/with_postgres.py --durable -- python bench/reads.py [--events 10000000]
        [--customers 1000] [--requests 200]

Loads the events directly in SQL (spread over the current month for `--customers` customers
on a monthly plan, with a hot customer holding 10% of them), builds the hourly rollups from
them as ingestion would have, then times, through Django's full request cycle (middleware,
authentication, views, rendering; no network), the allowance endpoint, the usage API and
the portal dashboard for the hot customer. For the ratio, the same run times the usage
figure computed from the raw events instead of the rollups.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_project.settings")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load(events: int, customers: int) -> dict:
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from invoicing.demo import DEMO_PRICES
    from invoicing.services import plans, subscriptions
    from metering import services
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
    plan = plans.create_plan_version(
        code="bench", name="Bench", currency="USD", interval="month", prices=DEMO_PRICES
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
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    span = max(int((now - month_start).total_seconds()) - 60, 3600)
    meter_ids = list(Meter.objects.order_by("code").values_list("pk", flat=True))
    t = time.perf_counter()
    with connection.cursor() as cursor:
        # 10% of the events belong to the hot customer, the rest spread over all customers
        cursor.execute(
            "INSERT INTO metering_usageevent (customer_id, meter_id, event_id, quantity,"
            " timestamp, properties, fingerprint, received_at)"
            " SELECT CASE WHEN g %% 10 = 0 THEN %s ELSE (SELECT min(id) FROM metering_customer)"
            "   + (g %% %s) END, (%s::bigint[])[1 + (g %% 3)], 'e' || g, (g %% 997) + 0.5,"
            " %s::timestamptz + ((g * 7919) %% %s) * interval '1 second',"
            " jsonb_build_object('agent_id', 'a' || (g %% 20)), md5(g::text), now()"
            " FROM generate_series(1::bigint, %s) g",
            [hot.pk, customers, meter_ids, month_start, span, events],
        )
        cursor.execute(
            "INSERT INTO metering_usageeventkey (customer_id, event_id, fingerprint)"
            " SELECT customer_id, event_id, fingerprint FROM metering_usageevent"
        )
        cursor.execute(
            "INSERT INTO metering_usagerollup (customer_id, meter_id, hour, quantity,"
            " event_count, max_quantity, latest_at, latest_event_pk, latest_quantity)"
            " SELECT customer_id, meter_id, date_trunc('hour', timestamp, 'UTC'), sum(quantity),"
            " count(*), max(quantity), max(timestamp),"
            " (array_agg(id ORDER BY timestamp DESC, id DESC))[1],"
            " (array_agg(quantity ORDER BY timestamp DESC, id DESC))[1]"
            " FROM metering_usageevent GROUP BY 1, 2, 3"
        )
        cursor.execute("ANALYZE")
    load_seconds = time.perf_counter() - t
    user = User.objects.create_user("hot", password="bench-password-1")  # noqa: S106
    PortalMembership.objects.create(user=user, customer=hot)
    _, key = services.create_api_key(name="bench")
    return {"hot": hot, "user": user, "key": key, "load_seconds": load_seconds}


def time_requests(client, url: str, n: int, **headers) -> list[float]:
    timings = []
    for _ in range(n):
        t = time.perf_counter()
        response = client.get(url, **headers)
        timings.append((time.perf_counter() - t) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code} {response.content[:300]!r}")
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    if "postgres" not in os.environ.get("DATABASE_URL", ""):
        print("run under scripts/with_postgres.py (or set DATABASE_URL to PostgreSQL)")
        return 2
    import django

    django.setup()
    from django.test import Client
    from django.test.utils import setup_test_environment

    from invoicing.services import subscriptions
    from metering import aggregation
    from metering.models import Meter, UsageEvent

    setup_test_environment()  # allow the test client's host
    data = load(args.events, args.customers)
    hot = data["hot"]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {data['key']}"}
    client = Client()
    client.force_login(data["user"])
    results = {
        "events_stored": UsageEvent.objects.count(),
        "hot_customer_events": UsageEvent.objects.filter(customer=hot).count(),
        "load_seconds": round(data["load_seconds"], 1),
    }
    endpoints = {
        "allowance": (f"/api/v1/customers/{hot.external_id}/allowance", auth),
        "usage_api": (f"/api/v1/customers/{hot.external_id}/usage", auth),
        "dashboard": ("/portal/", {}),
    }
    for name, (url, headers) in endpoints.items():
        time_requests(client, url, 5, **headers)  # warm-up
        timings = time_requests(client, url, args.requests, **headers)
        results[f"{name}_p50_ms"] = round(statistics.median(timings), 1)
        results[f"{name}_p95_ms"] = round(percentile(timings, 0.95), 1)
        results[f"{name}_max_ms"] = round(max(timings), 1)
    # the same figure from raw events, for the ratio
    period = subscriptions.current_period(customer=hot, now=datetime.now(UTC))
    meters = {m.pk: m for m in Meter.objects.all()}
    timings = []
    for _ in range(5):
        t = time.perf_counter()
        from_events = aggregation.summarize_window(
            customer_id=hot.pk, start=period.start, end=period.end, meters=meters
        )
        timings.append((time.perf_counter() - t) * 1000)
    t_rollups = []
    for _ in range(20):
        t = time.perf_counter()
        from_rollups = aggregation.window_quantities(
            customer_id=hot.pk, start=period.start, end=period.end, meters=meters
        )
        t_rollups.append((time.perf_counter() - t) * 1000)
    same = {k: v.quantity for k, v in from_events.items()} == from_rollups
    results["usage_from_events_median_ms"] = round(statistics.median(timings), 1)
    results["usage_from_rollups_median_ms"] = round(statistics.median(t_rollups), 2)
    results["events_over_rollups_ratio"] = round(
        statistics.median(timings) / statistics.median(t_rollups), 1
    )
    results["rollups_equal_events"] = same
    for key, value in results.items():
        print(f"{key:32} {value}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (out / f"reads-{stamp}.json").write_text(json.dumps(results, indent=2))
    ok = same and all(results[f"{n}_p95_ms"] < 50 for n in endpoints)
    print("TARGET MET (p95 < 50 ms)" if ok else "TARGET NOT MET")
    return 0


if __name__ == "__main__":
    sys.exit(main())
