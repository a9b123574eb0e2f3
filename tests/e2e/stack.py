"""The system under test, assembled from real processes: Redis, gunicorn, Celery workers and
beat against the pytest-django test database, with the fake Stripe and an SMTP server capturing
mail in this process. A test starts what its scenario needs; `stop_all()` ends all of it."""

from __future__ import annotations

import random
import re
import subprocess
import time
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from celery import Celery
from django.db import connection
from django.utils import timezone

from invoicing.models import Invoice, PricePlan
from invoicing.services import plans, subscriptions
from metering import services as metering_services
from metering.models import ApiKey, Customer
from tests.e2e import processes
from tests.e2e.fleet import Ledger, usage_name
from tests.e2e.fleet import usage as fleet_usage
from tests.e2e.processes import MailCapture, RedisServer, wait_for
from tests.factories import CustomerFactory
from tests.fake_stripe import FakeStripe
from tests.invoicing.conftest import EXAMPLE_PRICES

# Short enough for a test, long enough that the steps visibly happen in order (seconds).
GRACE = 3
REVIEW = 3
BEAT_EVERY = 2


class Stack:
    """One scenario's processes, their environment and their logs (under `tmp`)."""

    def __init__(
        self, tmp: Path, *, redis: RedisServer, mail: MailCapture, stripe: FakeStripe
    ) -> None:
        self.tmp = tmp
        self.redis = redis
        self.mail = mail
        self.stripe = stripe
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.web_url = ""
        self._sender: Celery | None = None

    # --- environment ----------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        """A service process's environment: the test database, this Redis as the broker,
        Stripe through the fake, mail through the capturing SMTP server."""
        settings = dict(
            BILLING_ENV="test",
            BILLING_VAR_DIR=str(self.tmp / "var"),
            ALLOWED_HOSTS="127.0.0.1",
            CELERY_BROKER_URL=self.redis.url,
            BILLING_GRACE_PERIOD=str(GRACE),
            BILLING_REVIEW_PERIOD=str(REVIEW),
            BILLING_RATE_LIMIT_EVENTS="off",  # the fleet is one key posting fast, on purpose
            BILLING_BACKEND="stripe",
            STRIPE_API_BASE=self.stripe.url,
            STRIPE_API_KEY=self.stripe.api_key,
            STRIPE_WEBHOOK_SECRET=self.stripe.webhook_secret,
            STRIPE_KEY_PREFIX="e2e",
            STRIPE_TIMEOUT="1",  # the fake's timeout fault answers later than this
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=str(self.mail.port),
            LOG_LEVEL="INFO",
        )
        settings.update(extra)
        return processes.service_env(**settings)

    # --- processes ------------------------------------------------------------------------

    def _log(self, name: str) -> Path:
        path = self.tmp / f"{name}.log"
        if path.exists():  # a restarted process keeps its predecessor's log
            path.rename(self.tmp / f"{name}.{time.monotonic_ns()}.log")
        self.logs[name] = path
        return path

    def start_web(self, **extra: str) -> str:
        process, self.web_url = processes.start_gunicorn(
            env=self.env(**extra), log=self._log("gunicorn")
        )
        self.processes["gunicorn"] = process
        return self.web_url

    def start_worker(self, name: str = "worker", **extra: str) -> subprocess.Popen:
        process = processes.start_worker(
            broker_url=self.redis.url, name=name, log=self._log(name), env=self.env(**extra)
        )
        self.processes[name] = process
        return process

    def start_beat(self, *, every: int = BEAT_EVERY) -> subprocess.Popen:
        processes.schedule_beat(every=every)
        process = processes.start_beat(
            env=self.env(), log=self._log("beat"), schedule=self.tmp / "beat-schedule"
        )
        self.processes["beat"] = process
        return process

    def kill(self, name: str) -> None:
        processes.kill(self.processes.pop(name))

    def stop(self, name: str) -> None:
        processes.stop(self.processes.pop(name))

    def stop_all(self) -> None:
        for name in list(self.processes):
            processes.stop(self.processes.pop(name))
        if self._sender is not None:
            self._sender.close()
            self._sender = None

    def log(self, name: str) -> str:
        return self.logs[name].read_text()

    # --- tasks ----------------------------------------------------------------------------

    def send(self, task: str, *args: object) -> str:
        """Queue a task by name, as beat or a web process would; returns its id."""
        if self._sender is None:
            self._sender = Celery(broker=self.redis.url, set_as_current=False)
        return self._sender.send_task(task, args=args).id

    def received(self, name: str, task: str = r"[\w.]+") -> list[str]:
        """Ids of the tasks (named like `task`, a regex) a worker's log says it received."""
        return re.findall(rf"Task {task}\[([0-9a-f-]+)\] received", self.log(name))

    # --- Stripe ---------------------------------------------------------------------------

    def settle_in_stripe(self) -> None:
        """Stripe's signed `invoice.paid` webhook for each invoice it holds (charged at
        delivery), to gunicorn: ours become paid, as Stripe's are."""
        for invoice in Invoice.objects.filter(stripe_invoice_id__gt="").order_by("pk"):
            event = self.stripe.invoice_event("invoice.paid", invoice.stripe_invoice_id)
            response = self.stripe.deliver(self.web_url, event)
            assert response.status_code == 200, response.text

    # --- the command line -----------------------------------------------------------------

    def reconcile(self) -> subprocess.CompletedProcess:
        """`manage.py reconcile` against the test database and the fake Stripe."""
        return processes.manage("reconcile", env=self.env())


# --- Data ---------------------------------------------------------------------------------


def hourly_plan(code: str = "e2e") -> PricePlan:
    """The DESIGN example prices on an hourly interval (the shortest the product has)."""
    return plans.create_plan_version(
        code=code, name="End to end", currency="USD", interval="hour", prices=EXAMPLE_PRICES
    )


def subscribe(
    *, count: int, plan: PricePlan, anchor: datetime, prefix: str = "cust"
) -> list[Customer]:
    """`count` customers (each with a billing e-mail) on `plan`, their periods every hour
    from `anchor` (in the past: the periods up to now exist at once)."""
    customers = []
    for n in range(count):
        customer = CustomerFactory(external_id=f"{prefix}-{n}", name=f"Customer {n}")
        subscriptions.subscribe_customer(customer=customer, plan=plan, now=anchor, anchor=anchor)
        customers.append(customer)
    return customers


def past_usage(
    *, api_key: ApiKey, customers: int, per_period: int, periods: int = 2, prefix: str = "cust"
) -> tuple[Ledger, datetime]:
    """Customers whose last `periods` hourly periods have ended (a minute ago, so they are
    due whatever the grace period) with usage recorded in each; returns the ledger of the
    events and the end of the last due period."""
    now = timezone.now().replace(microsecond=0)
    anchor = now - timedelta(hours=periods, minutes=1)
    ledger = Ledger()
    rng = random.Random(customers * 1000 + per_period)
    for customer in subscribe(count=customers, plan=hourly_plan(), anchor=anchor, prefix=prefix):
        events = []
        for period in range(periods):
            for n in range(per_period):
                at = anchor + timedelta(hours=period, seconds=rng.randint(0, 3599))
                for meter, amount, extra in fleet_usage(rng):
                    name = usage_name(meter, extra)
                    events.append(
                        {
                            "event_id": f"{customer.external_id}-{period}-{n}-{name}",
                            "customer_id": customer.external_id,
                            "meter": meter,
                            "quantity": str(amount),
                            "timestamp": at.isoformat(),
                            "properties": extra,
                        }
                    )
        metering_services.record_usage_events(api_key=api_key, raw_events=events, now=now)
        for event in events:
            ledger.add(
                event["customer_id"], event["event_id"], event["meter"], Decimal(event["quantity"])
            )
    return ledger, anchor + timedelta(hours=periods)


# --- PostgreSQL-side pauses ----------------------------------------------------------------

PAUSE_FUNCTION = """
CREATE OR REPLACE FUNCTION e2e_pause() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- TG_ARGV: seconds to sleep, and on which firing (1 = the first) of this trigger
    IF nextval('e2e_pause_hits_' || TG_TABLE_NAME) = TG_ARGV[1]::bigint THEN
        PERFORM pg_sleep(TG_ARGV[0]::float);
    END IF;
    RETURN NULL;
END $$
"""


def pause_inserts(table: str, *, seconds: float, on_firing: int = 1) -> None:
    """Make the `on_firing`-th INSERT statement into `table` sleep `seconds` inside its
    transaction (a statement-level AFTER INSERT trigger), so a test can act at that point."""
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE SEQUENCE IF NOT EXISTS e2e_pause_hits_{table}")
        cursor.execute(PAUSE_FUNCTION)
        cursor.execute(
            f"CREATE TRIGGER e2e_pause AFTER INSERT ON {table} FOR EACH STATEMENT "
            f"EXECUTE FUNCTION e2e_pause('{float(seconds)}', '{int(on_firing)}')"
        )


def remove_pauses(*tables: str) -> None:
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"DROP TRIGGER IF EXISTS e2e_pause ON {table}")
            cursor.execute(f"DROP SEQUENCE IF EXISTS e2e_pause_hits_{table}")


def sleeping_in(table: str) -> int | None:
    """The pid of a session sleeping in the pause trigger of an INSERT into `table`."""
    for pid, wait_event, query in processes.other_backends():
        if wait_event == "PgSleep" and query.lstrip().upper().startswith(
            f'INSERT INTO "{table.upper()}"'
        ):
            return pid
    return None


def wait_sleeping_in(table: str, *, timeout: float) -> int:
    found: list[int] = []

    def sleeping() -> bool:
        pid = sleeping_in(table)
        if pid is not None:
            found.append(pid)
        return pid is not None

    wait_for(sleeping, timeout=timeout, what=f"a close to pause in an INSERT into {table}")
    return found[0]


def wait_session_gone(pid: int, *, timeout: float) -> None:
    wait_for(
        lambda: pid not in {p for p, _, _ in processes.other_backends()},
        timeout=timeout,
        what=f"PostgreSQL to end the dead worker's session {pid}",
    )
