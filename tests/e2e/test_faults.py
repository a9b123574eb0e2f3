"""Faults injected into the running system, each followed by the same invariant check
(tests/e2e/invariants.py): nothing lost, nothing counted twice, one invoice per period, Stripe
equal to our books, one e-mail per notification, reconcile clean.

Where a fault must land inside a close, PostgreSQL itself pauses the close: a statement
trigger sleeps on the n-th INSERT into a table (the app has no fault-injection switch, and
needs none), and the test acts while pg_stat_activity shows the session sleeping there.
"""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connection
from django.utils import timezone

from invoicing.models import BillingPeriod, Invoice, StripeInvoiceSync
from invoicing.services import closing
from metering import services as metering_services
from metering.models import UsageAggregate
from notifications.models import Notification
from tests.e2e.fleet import Ledger, run_fleet
from tests.e2e.invariants import (
    assert_events_stored_and_billed,
    assert_invariants,
    assert_periods_closed_once,
    assert_reconciled,
    invoice_statuses,
)
from tests.e2e.processes import can_restart_postgres, restart_postgres, wait_for
from tests.e2e.stack import (
    BEAT_EVERY,
    REVIEW,
    hourly_plan,
    past_usage,
    pause_inserts,
    remove_pauses,
    subscribe,
    wait_session_gone,
    wait_sleeping_in,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.needs("redis-server"),
]
CUSTOMERS = 4
VISIBILITY = 5  # seconds: CELERY_VISIBILITY_TIMEOUT of the workers that are killed here
CLOSED = BillingPeriod.Status.CLOSED


def wait_all_closed(due_before, *, expected: int, timeout: float = 60) -> None:
    due = BillingPeriod.objects.filter(end__lte=due_before)
    wait_for(
        lambda: due.filter(status=CLOSED).count() == expected,
        timeout=timeout,
        what=f"{expected} due periods to close",
    )


def wait_all_sent(*, timeout: float = 60, at_least: int = 0) -> None:
    """Every message queued so far sent: the billing cycle queues each new draft's usage
    summary for the worker as it closes the period. `at_least`: how many must exist first
    (the summaries are written after the closes commit, so "none unsent" alone can hold
    before they exist)."""
    unsent = Notification.objects.exclude(status=Notification.Status.SENT)
    wait_for(
        lambda: Notification.objects.count() >= at_least and not unsent.exists(),
        timeout=timeout,
        what="every queued message sent",
    )


def wait_all_delivered(*, expected: int, timeout: float) -> None:
    delivered = StripeInvoiceSync.objects.filter(status=StripeInvoiceSync.Status.DELIVERED)
    wait_for(
        lambda: delivered.count() == expected,
        timeout=timeout,
        what=f"{expected} invoices delivered to Stripe",
    )


# --- The worker killed in the middle of a close ---------------------------------------------

KILL_POINTS = [
    # (table whose INSERT pauses, on which firing, periods closed and committed at the kill)
    pytest.param("metering_usageaggregate", 1, 0, id="aggregates-written"),
    pytest.param("invoicing_invoiceline", 1, 0, id="invoices-and-lines-written"),
    pytest.param("invoicing_auditentry", 2, CUSTOMERS, id="second-pass-audit-written"),
]


@pytest.mark.parametrize(("table", "firing", "closed_at_kill"), KILL_POINTS)
def test_worker_killed_mid_close_then_restarted(
    stack, service_key, dead_clients_noticed, table, firing, closed_at_kill
):
    """The worker is SIGKILLed inside a close of 2 due periods x 4 customers, at one of three
    points (aggregates inserted; invoices and lines inserted; the second period's audit entries
    inserted after the first period's close committed); its transaction rolls back, and the
    restarted worker gets the same task again after the visibility timeout (acks_late) and
    closes every period exactly once."""
    ledger, due_before = past_usage(api_key=service_key[0], customers=CUSTOMERS, per_period=5)
    pause_inserts(table, seconds=120, on_firing=firing)
    stack.start_worker("worker", CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY))
    task_id = stack.send("billing_cycle.run_billing_cycle")

    session = wait_sleeping_in(table, timeout=60)
    stack.kill("worker")
    killed_at = time.monotonic()
    wait_session_gone(session, timeout=15)
    remove_pauses(table)
    assert task_id in stack.received("worker")
    # The killed transaction left nothing; only a close that committed before it is kept.
    assert BillingPeriod.objects.filter(status=CLOSED).count() == closed_at_kill
    assert Invoice.objects.count() == closed_at_kill
    assert UsageAggregate.objects.count() == closed_at_kill * 3  # one per meter

    time.sleep(max(0.0, killed_at + VISIBILITY + 1 - time.monotonic()))
    stack.start_worker("worker", CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY))
    wait_all_closed(due_before, expected=2 * CUSTOMERS)
    assert task_id in stack.received("worker"), "the message did not come back"
    wait_for(lambda: "succeeded" in stack.log("worker"), timeout=30, what="the redelivered task")
    wait_all_sent()
    assert_invariants(stack, ledger, due_before=due_before)


# --- Redis -------------------------------------------------------------------------------------


def test_redis_restarted_while_tasks_are_queued(stack, service_key):
    """Redis (append-only file on) is restarted on the same port and data directory while a
    close runs and two more tasks wait in the queue: the queue survives, the worker reconnects,
    and every task runs: each period closed once, each summary mailed once."""
    ledger, due_before = past_usage(api_key=service_key[0], customers=CUSTOMERS, per_period=4)
    pause_inserts("metering_usageaggregate", seconds=6)
    stack.start_worker("worker", CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY))
    running = stack.send("billing_cycle.run_billing_cycle")
    wait_sleeping_in("metering_usageaggregate", timeout=60)
    queued = [
        stack.send("notifications.send_usage_summaries"),
        stack.send("billing_cycle.run_billing_cycle"),
    ]
    wait_for(lambda: stack.redis.queue_length() == 2, timeout=10, what="two queued tasks")

    stack.redis.restart()
    assert stack.redis.queue_length() == 2  # the append-only file kept them

    wait_all_closed(due_before, expected=2 * CUSTOMERS)
    wait_for(
        lambda: {running, *queued} <= set(stack.received("worker")),
        timeout=60,
        what="the worker to receive the queued tasks after the restart",
    )
    summaries = Notification.objects.filter(kind=Notification.Kind.USAGE_SUMMARY)
    wait_for(
        lambda: summaries.filter(status=Notification.Status.SENT).count() == 2 * CUSTOMERS,
        timeout=60,
        what="every summary to be sent",
    )
    assert_invariants(stack, ledger, due_before=due_before)


def test_redis_without_persistence_restarted_beat_reselects_the_closes(volatile_stack, service_key):
    """Redis without persistence is restarted while two close tasks wait in its queue (no
    worker consuming yet): they are lost, and beat, selecting what is due at each run, closes
    every period anyway; summaries, finalization, Stripe delivery and webhooks follow."""
    stack = volatile_stack
    stack.start_web()
    ledger, due_before = past_usage(api_key=service_key[0], customers=CUSTOMERS, per_period=3)
    stack.send("billing_cycle.run_billing_cycle")
    stack.send("billing_cycle.run_billing_cycle")
    assert stack.redis.queue_length() == 2
    stack.redis.restart()
    assert stack.redis.queue_length() == 0  # the queued tasks are gone

    stack.start_worker()
    stack.start_beat()
    wait_all_closed(due_before, expected=2 * CUSTOMERS)
    wait_all_delivered(expected=2 * CUSTOMERS, timeout=60)
    stack.settle_in_stripe()
    assert_invariants(stack, ledger, due_before=due_before)


def test_redis_without_persistence_restarted_while_summaries_are_queued(
    volatile_stack, service_key
):
    """Redis without persistence is restarted while the worker, queueing the usage summaries
    of 4 drafts in the billing cycle, has put 3 send tasks in the queue (it is paused inside
    the 4th outbox insert): those messages are lost; the summary task queues pending messages
    again after BILLING_NOTIFICATION_RETRY_AFTER, so within 6 beat runs every summary is still
    sent once and every invoice finalized and delivered."""
    stack = volatile_stack
    stack.start_web()
    ledger, due_before = past_usage(api_key=service_key[0], customers=2, per_period=3)
    stack.start_worker(BILLING_NOTIFICATION_RETRY_AFTER="2")
    pause_inserts("notifications_notification", seconds=4, on_firing=4)
    stack.send("billing_cycle.run_billing_cycle")  # closes, then queues the summaries
    wait_sleeping_in("notifications_notification", timeout=60)
    wait_all_closed(due_before, expected=2 * 2)
    assert stack.redis.queue_length() == 3  # the first three summaries' send tasks
    stack.redis.restart()
    assert stack.redis.queue_length() == 0
    remove_pauses("notifications_notification")

    stack.start_beat()
    summaries = Notification.objects.filter(kind=Notification.Kind.USAGE_SUMMARY)
    deadline = time.monotonic() + 6 * BEAT_EVERY + REVIEW + 5
    while time.monotonic() < deadline and (
        summaries.exclude(status=Notification.Status.SENT).exists()
        or StripeInvoiceSync.objects.filter(status=StripeInvoiceSync.Status.DELIVERED).count()
        < 2 * 2
    ):
        time.sleep(0.5)
    stuck = list(summaries.exclude(status=Notification.Status.SENT).values_list("key", "status"))
    assert stuck == [], f"summaries never sent: {stuck}; invoices {invoice_statuses()}"
    stack.settle_in_stripe()
    assert_invariants(stack, ledger, due_before=due_before)


def test_delivery_redelivered_after_visibility_timeout(stack, service_key):
    """A worker delivering an invoice to Stripe is SIGKILLed while Stripe has created the
    invoice but not yet answered; the unacknowledged message comes back after the visibility
    timeout to another worker, which finds the Stripe invoice by our id instead of creating a
    second one; Stripe ends with exactly our invoices and totals."""
    stack.start_web()
    ledger, due_before = past_usage(api_key=service_key[0], customers=3, per_period=3)
    # The first invoice creation is applied by Stripe, its answer held back for 30 s.
    stack.stripe.inject("timeout", path=r"/v1/invoices", delay=30)
    stack.start_worker("worker-a", CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY), STRIPE_TIMEOUT="60")
    stack.start_beat()

    wait_for(
        lambda: any(r.fault == "timeout" for r in stack.stripe.requests),
        timeout=60,
        what="the delivery to reach Stripe's held answer",
    )
    deliveries = stack.received("worker-a", task=r"invoicing\.deliver_invoice")
    stack.kill("worker-a")
    killed_at = time.monotonic()
    assert StripeInvoiceSync.objects.filter(status=StripeInvoiceSync.Status.DELIVERED).count() == 0

    time.sleep(max(0.0, killed_at + VISIBILITY + 1 - time.monotonic()))
    stack.start_worker("worker-b", CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY))
    wait_all_delivered(expected=3 * 2, timeout=90)  # 3 customers, 2 periods each
    assert deliveries[-1] in stack.received("worker-b"), "the message did not come back"
    assert len(stack.stripe.requests_to("POST", r"/v1/invoices")) == 3 * 2  # found, not re-made
    stack.settle_in_stripe()
    assert_invariants(stack, ledger, due_before=due_before)


# --- PostgreSQL ----------------------------------------------------------------------------


@pytest.mark.skipif(
    not can_restart_postgres(),
    reason="PostgreSQL was not started by scripts/with_postgres.py, so it cannot be restarted",
)
def test_postgres_restarted_while_agents_post(stack, service_key, tmp_path):
    """PostgreSQL is restarted (pg_ctl restart -m fast) while 4 agents post usage to gunicorn:
    requests fail meanwhile, the agents retry (the clients from their spools, the raw agent by
    hand), and afterwards every event is stored once and billed once by the worker's close."""
    url = stack.start_web()
    stack.start_worker()
    now = timezone.now().replace(microsecond=0)
    anchor = now - timedelta(hours=2, minutes=1)
    ids = [c.external_id for c in subscribe(count=3, plan=hourly_plan(), anchor=anchor)]

    report = run_fleet(
        url=url,
        key=service_key[1],
        customers=ids,
        spool_dir=tmp_path,
        agents=4,
        tasks_per_agent=60,
        pace=0.03,
        timestamp=lambda rng: anchor + timedelta(seconds=rng.randint(0, 2 * 3600 - 1)),
        while_posting=restart_postgres,
    )
    assert report.errors == []
    assert report.retries > 0, "the restart went unnoticed: no request failed"

    stack.send("billing_cycle.run_billing_cycle")
    wait_all_closed(anchor + timedelta(hours=2), expected=2 * 3)
    wait_all_sent(at_least=2 * 3)  # one usage summary per closed period
    assert_invariants(stack, report.ledger, due_before=anchor + timedelta(hours=2))


# --- Stripe --------------------------------------------------------------------------------


def test_stripe_faults_while_the_worker_delivers(stack, service_key):
    """The fake Stripe answers 500, 429 (with Retry-After), times out after applying, and
    resets the connection after applying, across customer, invoice, item, finalize and pay
    requests, while the worker delivers 8 invoices (beat drives close, summary, review,
    finalization): the deliveries retry with the same idempotency keys and look up what a lost
    answer created, so Stripe ends with exactly our invoices, items and totals."""
    stack.start_web()
    ledger, due_before = past_usage(api_key=service_key[0], customers=CUSTOMERS, per_period=3)
    fake = stack.stripe
    fake.inject("500", path=r"/v1/customers", times=2)
    fake.inject("429", path=r"/v1/invoices", times=2)
    fake.inject("reset", path=r"/v1/invoices")  # created, the answer lost
    fake.inject("reset", path=r"/v1/invoiceitems", times=2)
    fake.inject("500", method="GET", path=r"/v1/invoiceitems", times=1)
    fake.inject("timeout", path=r"/v1/invoices/[^/]+/finalize", delay=2.5)
    fake.inject("reset", path=r"/v1/invoices/[^/]+/pay")
    stack.start_worker()
    stack.start_beat()

    wait_all_delivered(expected=CUSTOMERS * 2, timeout=150)  # 2 periods each
    assert fake.faults == []  # every fault was met
    assert {r.fault for r in fake.requests if r.fault} == {"500", "429", "timeout", "reset"}
    stack.settle_in_stripe()
    assert_invariants(stack, ledger, due_before=due_before)


# --- Clocks --------------------------------------------------------------------------------


def test_application_clock_ahead_of_database_clock(stack, service_key, settings):
    """The application's clock runs 10 minutes ahead of PostgreSQL's (time-machine in this
    process): the close takes every cut-off from the application clock alone (the period that
    ended by its clock closes, the next does not, the database's now() plays no part), events
    arriving after it for the closed period are billed once as adjustments on the next invoice,
    no event is split across periods, a close by a process with the right clock changes
    nothing, and reconcile is clean."""
    settings.BILLING_GRACE_PERIOD = 0
    real = timezone.now().replace(microsecond=0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        database_now = cursor.fetchone()[0]
    assert abs(database_now - real) < timedelta(seconds=5)
    anchor = real - timedelta(minutes=55)  # the first period ends 5 minutes from now (real)
    customers = subscribe(count=2, plan=hourly_plan(), anchor=anchor, prefix="clock")
    first_end = anchor + timedelta(hours=1)
    ledger = Ledger()

    def post(n: int, at, *, now) -> None:
        events = [
            {
                "event_id": f"clock-{n}-{c.external_id}-{meter}",
                "customer_id": c.external_id,
                "meter": meter,
                "quantity": str(quantity),
                "timestamp": at.isoformat(),
            }
            for c in customers
            for meter, quantity in (("agent_tasks", 1), ("llm_tokens", 1000 + n))
        ]
        result = metering_services.record_usage_events(
            api_key=service_key[0], raw_events=events, now=now
        )
        assert result.count("accepted") == len(events)
        for event in events:
            quantity = Decimal(event["quantity"])
            ledger.add(event["customer_id"], event["event_id"], event["meter"], quantity)

    with time_machine.travel(real + timedelta(minutes=10), tick=True):
        app_now = timezone.now()
        # Agents on the right clock report usage of the first period, one of them at its last
        # second (by the application clock, not in the future) and one on the app's clock.
        post(1, real - timedelta(minutes=3), now=app_now)
        post(2, first_end - timedelta(seconds=1), now=app_now)
        post(3, app_now, now=app_now)
        report = closing.close_due_periods(now=timezone.now())
        first = BillingPeriod.objects.filter(start=anchor)
        assert set(report.closed) == set(first.values_list("pk", flat=True))
        assert BillingPeriod.objects.filter(status=CLOSED).count() == 2
        with connection.cursor() as cursor:  # by the database's clock, it had not ended yet
            cursor.execute("SELECT bool_and(now() < %s)", [first_end])
            assert cursor.fetchone()[0] is True
        # usage of the closed period still arriving (agents' clocks): late, not lost
        post(4, real + timedelta(minutes=2), now=timezone.now())

    # A worker on the right clock: nothing is due by its clock, nothing changes.
    assert closing.close_due_periods(now=timezone.now()).closed == []
    # One period later (by the fast clock) the second periods close, with the late usage.
    with time_machine.travel(first_end + timedelta(hours=1, minutes=1), tick=True):
        report = closing.close_due_periods(now=timezone.now())
    assert len(report.closed) == 2
    adjustments = UsageAggregate.objects.filter(kind=UsageAggregate.Kind.ADJUSTMENT)
    assert sorted(adjustments.values_list("meter__code", "quantity")) == sorted(
        [("agent_tasks", 1), ("llm_tokens", 1004)] * 2
    )
    assert_events_stored_and_billed(ledger)
    assert_periods_closed_once(due_before=first_end + timedelta(hours=1))
    assert_reconciled(stack)
