"""The billing system as a state machine: random sequences of ingestion, duplicates, conflicts,
late events, clock moves, closes, usage reports, voids and Stripe webhooks, with the fake
Stripe failing at random, checked against a reference model (stateful_model.py) after every
step.

It runs in-process against the real PostgreSQL test database, with BILLING_BACKEND=stripe
pointed at the fake Stripe server, usage reported to Stripe's meters at close, and Celery
eager. Stripe calls refuse to run inside a transaction, and deliveries are queued on commit,
so each example cannot run inside a rolled-back transaction: the test is transactional and
each example starts by truncating the billing tables (identities restarted, so ids and invoice
numbers repeat from one example to the next) and emptying the fake Stripe.

Time is simulated: the machine's clock is passed to every service that takes `now`, and
time-machine holds the process's clock at the same instant (without ticking) for what reads
`timezone.now()` or `time.time()`: summaries, deliveries, the fake Stripe, webhook signatures.

Rules: ingest, duplicate, conflict, late_event, advance_clock, close (close_due_periods, the
summaries, finalize_due_invoices, Stripe delivery), report (usage to Stripe's meters), void,
webhook (invoice.paid / invoice.voided, maybe replayed), stale_webhook (an earlier snapshot
delivered out of order), stripe_fault (500, 429, timeout or reset-after-apply on the next
writes). After a step that talks to Stripe, deliveries and reports left pending by a fault are
retried (the Celery task run again) until they succeed, a bounded number of times.

Invariants: the stored events are the model's (a duplicate or conflict changes nothing); each
closed period has exactly one invoice, and each invoice's lines (usage and adjustments per
window and meter), amounts, total and status are the model's, so every event is billed once;
per customer and meter, the billed quantity equals the model's billed events; `reconcile()`
is empty; finalized invoice numbers are gapless; Stripe holds one invoice per delivered
invoice with an item per line and our total, in the expected status, and meter totals equal
to the usage reported; invoice statuses only move forward; one usage summary e-mail per
invoice.

A failure prints the shrunk sequence of steps and a `@reproduce_failure` blob; pytest's
`--hypothesis-seed=N` replays a whole run, and BILLING_STATEFUL_EXAMPLES=N searches longer.
Sequences the machine found failing are kept below as plain tests, replayed step by step.
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import time_machine
from celery.exceptions import Retry
from django.apps import apps
from django.core import mail
from django.db import connection
from django.test import Client
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from invoicing import tasks
from invoicing.models import (
    BillingPeriod,
    Invoice,
    InvoiceLine,
    StripeCustomer,
    StripeInvoiceSync,
    StripeMeterMapping,
    UsageReport,
)
from invoicing.services import closing, invoices, plans, subscriptions
from invoicing.services.reconcile import reconcile
from invoicing.stripe import usage_reports
from metering import services as metering_services
from metering.models import UsageEvent
from notifications import services as notification_services
from notifications.models import Notification
from tests.factories import CustomerFactory, MeterFactory
from tests.fake_stripe import FakeStripe, fake_stripe, fake_stripe_server  # noqa: F401
from tests.invoicing import stateful_model as model
from tests.invoicing.conftest import EXAMPLE_PRICES, T0

pytestmark = pytest.mark.django_db(transaction=True)

CUSTOMERS = ("acme", "globex")
METERS = {"agent_tasks": "count", "llm_tokens": "sum", "agent_minutes": "sum"}
GRACE = timedelta(minutes=10)  # BILLING_GRACE_PERIOD
REVIEW = timedelta(minutes=20)  # BILLING_REVIEW_PERIOD
MAX_EVENT_FUTURE = timedelta(minutes=5)
# An example simulates at most this much time (six hourly periods and some): enough for late
# events several periods back, and it bounds the cost of an example (reconcile re-derives
# every period after every step).
MAX_SPAN = timedelta(hours=6)
ELSEWHERE = timezone(timedelta(hours=2))  # the same instants, written with another offset
FAULT_PATHS = [
    r"/v1/.*",
    r"/v1/customers",
    r"/v1/invoices",
    r"/v1/invoiceitems",
    r"/v1/invoices/.*/finalize",
    r"/v1/invoices/.*/send",
    r"/v1/invoices/.*/void",
    r"/v1/billing/meter_events",
]

# Quantities with up to two decimals; tokens now and then large enough to cross a tier.
QUANTITIES = st.one_of(
    st.integers(0, 200).map(Decimal),
    st.integers(0, 90_000_000).map(lambda n: Decimal(n).scaleb(-2)),
)
# (customer, meter, quantity, seconds before the clock: negative is ahead of it)
NEW_EVENT = st.tuples(
    st.sampled_from(CUSTOMERS),
    st.sampled_from(sorted(METERS)),
    QUANTITIES,
    st.integers(-int(MAX_EVENT_FUTURE.total_seconds()), 3 * 3600),
)


# 60-90 s on two cores (once it passes); BILLING_STATEFUL_EXAMPLES=150 takes about 8 minutes.
RUN = hypothesis_settings(
    max_examples=int(os.environ.get("BILLING_STATEFUL_EXAMPLES", "15")),
    stateful_step_count=35,
    deadline=None,  # a step is a close with Stripe round trips (and timeouts): no deadline
    print_blob=True,  # a failure prints @reproduce_failure(...) to replay it exactly
    # Each step runs real database work and HTTP round trips to the fake Stripe, which
    # Hypothesis counts as slow data generation in a stateful test: that is expected here.
    suppress_health_check=[HealthCheck.too_slow],
)
INVARIANTS: list[str] = []  # the names of the machine's invariants, in definition order


def checked(method):
    """An invariant of the machine, checked after every step (and by the replay tests)."""
    INVARIANTS.append(method.__name__)
    return invariant()(method)


def _truncate_billing_tables() -> None:
    """Empty every table of the billing apps and restart their identities: a clean example."""
    tables = [
        model_class._meta.db_table
        for label in ("metering", "invoicing", "notifications")
        for model_class in apps.get_app_config(label).get_models(include_auto_created=True)
        if model_class._meta.managed and not model_class._meta.proxy
    ]
    quoted = ", ".join(connection.ops.quote_name(t) for t in tables)
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {quoted} RESTART IDENTITY CASCADE")


def _line_key(line: InvoiceLine) -> model.LineKey:
    return (line.kind, line.aggregate.window_start, line.meter.code)


class BillingMachine(RuleBasedStateMachine):
    """One example: two customers on the hourly example plan from T0, three meters."""

    # Set by the test function before the run: the fake Stripe server.
    fake: FakeStripe

    events = Bundle("events")

    def __init__(self) -> None:
        super().__init__()
        _truncate_billing_tables()
        self.fake.reset()
        mail.outbox = []
        self._travel = time_machine.travel(T0, tick=False)
        self._clock = self._travel.start()
        self.client = Client()

        meter_rows = {
            code: MeterFactory(code=code, unit=code.split("_")[1].rstrip("s"), aggregation=agg)
            for code, agg in METERS.items()
        }
        plan = plans.create_plan_version(
            code="pro", name="Pro", currency="USD", interval="hour", prices=EXAMPLE_PRICES
        )
        for external_id in CUSTOMERS:
            customer = CustomerFactory(external_id=external_id)
            subscriptions.subscribe_customer(customer=customer, plan=plan, now=T0)
        self.api_key, _ = metering_services.create_api_key(name="stateful")
        for code, meter in meter_rows.items():
            self.fake.create_meter(f"{code}_evt")
            StripeMeterMapping.objects.create(
                meter=meter, event_name=f"{code}_evt", reporting_from=T0 - model.H
            )

        self.model = model.BillingModel(
            t0=T0,
            customers=CUSTOMERS,
            specs={p.meter: p.spec for p in EXAMPLE_PRICES},
            counted=frozenset(code for code, agg in METERS.items() if agg == "count"),
            grace=GRACE,
            review=REVIEW,
        )
        self.next_event = 0
        self.observed: dict[int, str] = {}  # invoice pk -> status last seen
        # invoice key -> webhook events Stripe sent for it (to replay out of order)
        self.sent_events: dict[tuple, list[dict]] = {}

    def teardown(self) -> None:
        self._travel.stop()

    def check_invariants_now(self) -> None:
        for name in INVARIANTS:
            getattr(self, name)()

    # --- helpers ------------------------------------------------------------------------

    @property
    def now(self):
        return self.model.clock

    def _send(self, payloads: list[dict]) -> list[str]:
        """Record events as the ingestion API does; their statuses, in order."""
        result = metering_services.record_usage_events(
            api_key=self.api_key, raw_events=payloads, now=self.now
        )
        assert [event_id for event_id, _ in result.statuses] == [p["event_id"] for p in payloads]
        return [status for _, status in result.statuses]

    def _payload(self, customer: str, meter: str, quantity: Decimal, timestamp) -> dict:
        self.next_event += 1
        payload = {
            "event_id": f"ev-{self.next_event}",
            "customer_id": customer,
            "meter": meter,
            "timestamp": timestamp.isoformat(),
        }
        if meter not in self.model.counted:
            payload["quantity"] = str(quantity)
        return payload

    def _record_new(self, payloads: list[dict]) -> list[tuple[str, str]]:
        statuses = self._send(payloads)
        assert statuses == [metering_services.ACCEPTED] * len(payloads), statuses
        keys = []
        for payload in payloads:
            event = model.Event(
                customer=payload["customer_id"],
                event_id=payload["event_id"],
                meter=payload["meter"],
                quantity=Decimal(payload.get("quantity", 1)),
                timestamp=datetime.fromisoformat(payload["timestamp"]),
                payload=payload,
            )
            self.model.accept(event)
            keys.append((event.customer, event.event_id))
        return keys

    def _invoice(self, key: tuple) -> Invoice:
        customer, start = key
        return Invoice.objects.get(period__customer__external_id=customer, period__start=start)

    def _settle_stripe(self) -> None:
        """Run the delivery and report tasks again for whatever a fault left pending, as
        Celery's retries would, until nothing is pending. Bounded: each failed attempt uses up
        at least one armed fault, so a round more than there are faults must be enough (one
        more spares a slow machine's genuine timeout)."""
        rounds = len(self.fake.faults) + 2
        for attempt in range(rounds + 1):
            deliveries = list(
                StripeInvoiceSync.objects.filter(status=StripeInvoiceSync.Status.PENDING)
                .order_by("invoice_id")
                .values_list("invoice_id", flat=True)
            )
            reports = list(
                UsageReport.objects.filter(status=UsageReport.Status.PENDING)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
            if not deliveries and not reports:
                return
            if attempt == rounds:
                break
            for invoice_id in deliveries:
                try:
                    tasks.deliver_invoice.apply(args=[invoice_id])
                except Retry:
                    pass
            for report_id in reports:
                try:
                    tasks.stripe_send_usage_report.apply(args=[report_id])
                except Retry:
                    pass
        raise AssertionError(
            f"still pending after {rounds} retries: invoices {deliveries}, reports {reports}"
        )

    def _remember_finalized_events(self) -> None:
        """Stripe announces each newly finalized invoice; the event is kept, to be delivered
        late (out of order) by stale_webhook."""
        for key, invoice in self.model.invoices.items():
            if invoice.stripe_status is not None and key not in self.sent_events:
                stripe_id = self._invoice(key).stripe_invoice_id
                self.sent_events[key] = [self.fake.invoice_event("invoice.finalized", stripe_id)]

    def _post_webhook(self, event: dict) -> dict:
        response = self.fake.deliver(self.client, event)
        assert response.status_code == 200, response.content
        return response.json()

    # --- rules --------------------------------------------------------------------------

    @rule(target=events, batch=st.lists(NEW_EVENT, min_size=1, max_size=4))
    def ingest(self, batch):
        """New events (one request) in periods still open, up to five minutes ahead: each
        accepted."""
        payloads = []
        for customer, meter, quantity, seconds_back in batch:
            timestamp = max(self.now - timedelta(seconds=seconds_back), self.model.open_start)
            payloads.append(self._payload(customer, meter, quantity, timestamp))
        return multiple(*self._record_new(payloads))

    @rule(event=events, reformat=st.booleans())
    def duplicate(self, event, reformat):
        """The same event again (maybe written differently: another offset, trailing zeros):
        duplicate, nothing changes."""
        stored = self.model.events[event]
        payload = dict(stored.payload)
        if reformat:
            payload["timestamp"] = stored.timestamp.astimezone(ELSEWHERE).isoformat()
            if "quantity" in payload:
                payload["quantity"] = f"{Decimal(payload['quantity']):.6f}"
        assert self._send([payload]) == [metering_services.DUPLICATE]

    @rule(event=events, more=st.integers(1, 1000))
    def conflict(self, event, more):
        """The same event id with another quantity: conflict, the stored event is kept."""
        stored = self.model.events[event]
        payload = dict(stored.payload, quantity=str(stored.quantity + Decimal(more) / 100))
        assert self._send([payload]) == [metering_services.CONFLICT]

    @rule(
        target=events,
        customer=st.sampled_from(CUSTOMERS),
        meter=st.sampled_from(sorted(METERS)),
        quantity=QUANTITIES,
        seconds_back=st.integers(1, 48 * 3600),
    )
    def late_event(self, customer, meter, quantity, seconds_back):
        """An event of a closed period (or of the time before the first period): accepted,
        and billed once, as an adjustment on the customer's next invoice."""
        end = self.model.closed_end or T0
        earliest = T0 - 2 * model.H
        timestamp = max(end - timedelta(seconds=seconds_back), earliest)
        [key] = self._record_new([self._payload(customer, meter, quantity, timestamp)])
        return key

    @precondition(lambda self: self.model.clock < T0 + MAX_SPAN)
    @rule(minutes=st.integers(1, 120), beat=st.booleans())
    def advance_clock(self, minutes, beat):
        """Time passes (up to MAX_SPAN in all); with `beat`, the periodic close runs at the
        new time."""
        self.model.clock += timedelta(minutes=minutes)
        self._clock.move_to(self.model.clock)
        if beat:
            self._close()

    @rule()
    def close(self):
        """What beat does every minute: close due periods, send the summaries, finalize the
        reviewed drafts (each delivered to Stripe once the finalization commits)."""
        self._close()

    def _close(self) -> None:
        closing.close_due_periods(now=self.now)
        notification_services.queue_usage_summaries()
        invoices.finalize_due_invoices(now=self.now)
        self._settle_stripe()
        self.model.close(self.now)
        self._remember_finalized_events()

    @rule()
    def report(self):
        """Usage of the closed periods reported to Stripe's meters."""
        usage_reports.report_usage(now=self.now)
        self._settle_stripe()
        self.model.report()

    @precondition(
        lambda self: any(i.status == model.FINALIZED for i in self.model.invoices.values())
    )
    @rule(data=st.data())
    def void(self, data):
        """Finance staff void a finalized invoice."""
        key = data.draw(
            st.sampled_from(
                sorted(k for k, i in self.model.invoices.items() if i.status == model.FINALIZED)
            ),
            label="invoice",
        )
        self.void_invoice(key)

    def void_invoice(self, key: tuple) -> None:
        try:  # the push to Stripe runs when the void commits (eager Celery)
            invoices.void_invoice(invoice_id=self._invoice(key).pk, reason="test", now=self.now)
        except Retry:
            pass  # a fault: Celery would retry it later, as _settle_stripe does now
        self._settle_stripe()
        self.model.void(key)

    @precondition(lambda self: any(i.stripe_status == "open" for i in self.model.invoices.values()))
    @rule(data=st.data(), outcome=st.sampled_from(["paid", "void"]), replay=st.booleans())
    def webhook(self, data, outcome, replay):
        """The customer pays in Stripe, or finance staff void it there: Stripe's signed
        webhook comes back (maybe twice)."""
        key = data.draw(
            st.sampled_from(
                sorted(k for k, i in self.model.invoices.items() if i.stripe_status == "open")
            ),
            label="invoice",
        )
        self.stripe_webhook(key, outcome, replay=replay)

    def stripe_webhook(self, key: tuple, outcome: str, *, replay: bool = False) -> None:
        stripe_id = self._invoice(key).stripe_invoice_id
        snapshot = self.fake.set_invoice_status(stripe_id, outcome)
        event = self.fake.event("invoice.paid" if outcome == "paid" else "invoice.voided", snapshot)
        self.sent_events[key].append(event)
        assert self._post_webhook(event)["duplicate"] is False
        if replay:
            assert self._post_webhook(event)["duplicate"] is True
        self.model.invoices[key].stripe_status = outcome
        self.model.stripe_event(key, outcome)

    @precondition(lambda self: bool(self.sent_events))
    @rule(data=st.data())
    def stale_webhook(self, data):
        """An event Stripe sent earlier arrives (again, or late, out of order): nothing
        moves backwards."""
        key = data.draw(st.sampled_from(sorted(self.sent_events)), label="invoice")
        event = data.draw(st.sampled_from(self.sent_events[key]), label="event")
        self.late_webhook(key, event)

    def late_webhook(self, key: tuple, event: dict) -> None:
        self._post_webhook(event)
        self.model.stripe_event(key, event["data"]["object"]["status"])

    @rule(
        kind=st.sampled_from(["500", "429", "timeout", "reset"]),
        path=st.sampled_from(FAULT_PATHS),
        times=st.integers(1, 3),
    )
    def stripe_fault(self, kind, path, times):
        """The fake Stripe fails the next matching writes (timeout and reset after applying
        them); the steps that talk to Stripe retry until it succeeds. Only writes: reconcile,
        an invariant, reads Stripe, and a read that failed there would fail the check."""
        self.fake.inject(kind, method="POST", path=path, times=times, retry_after=1, delay=0.8)

    # --- invariants -----------------------------------------------------------------------

    @checked
    def stored_events_are_the_accepted_ones(self):
        stored = {
            (customer, event_id): (meter, quantity, timestamp)
            for customer, event_id, meter, quantity, timestamp in UsageEvent.objects.values_list(
                "customer__external_id", "event_id", "meter__code", "quantity", "timestamp"
            )
        }
        expected = {key: (e.meter, e.quantity, e.timestamp) for key, e in self.model.events.items()}
        assert stored == expected

    @checked
    def invoices_are_the_models(self):
        closed = set(
            BillingPeriod.objects.filter(status=BillingPeriod.Status.CLOSED).values_list(
                "customer__external_id", "start"
            )
        )
        assert closed == set(self.model.invoices), "closed periods"
        found = {}
        for invoice in Invoice.objects.select_related("period", "customer").prefetch_related(
            "lines__aggregate", "lines__meter"
        ):
            key = (invoice.customer.external_id, invoice.period.start)
            rows = list(invoice.lines.all())
            lines = {_line_key(row): (row.quantity, row.amount_minor) for row in rows}
            assert len(lines) == len(rows), f"{key}: two lines for one window"
            found[key] = (invoice.status, lines, invoice.total_minor)
        expected = {
            key: (i.status, i.lines, i.total_minor) for key, i in self.model.invoices.items()
        }
        assert found == expected  # one invoice per closed period, line for line

    @checked
    def each_event_billed_once(self):
        """Per customer and meter: what the lines bill == the billed events, counted once."""
        billed = Counter()
        for customer, meter, quantity in InvoiceLine.objects.exclude(
            kind=InvoiceLine.Kind.CAP_CREDIT
        ).values_list("invoice__customer__external_id", "meter__code", "quantity"):
            billed[(customer, meter)] += quantity
        for customer in CUSTOMERS:
            for meter in METERS:
                expected = self.model.events_billed_quantity(customer, meter)
                assert billed[(customer, meter)] == expected, (customer, meter)
                assert self.model.billed_quantity(customer, meter) == expected

    @checked
    def reconcile_is_clean(self):
        assert reconcile() == []

    @checked
    def invoice_numbers_are_gapless(self):
        numbers = sorted(
            Invoice.objects.exclude(status=Invoice.Status.DRAFT).values_list("number", flat=True)
        )
        by_year = Counter(n.rsplit("-", 1)[0] for n in numbers)
        expected = sorted(
            f"{prefix}-{i:06d}" for prefix, count in by_year.items() for i in range(1, count + 1)
        )
        assert numbers == expected

    @checked
    def statuses_only_move_forward(self):
        for pk, status in Invoice.objects.values_list("pk", "status"):
            before = self.observed.get(pk, model.DRAFT)
            assert status in model.FORWARD[before], f"invoice {pk}: {before} -> {status}"
            self.observed[pk] = status

    @checked
    def stripe_holds_our_invoices(self):
        ours = {
            (i.customer.external_id, i.period.start): i
            for i in Invoice.objects.select_related("customer", "period", "stripe_sync")
            .prefetch_related("lines")
            .exclude(status=Invoice.Status.DRAFT)
        }
        assert set(ours) == {k for k, i in self.model.invoices.items() if i.stripe_status}
        for key, invoice in ours.items():
            expected = self.model.invoices[key]
            assert invoice.stripe_sync.status == StripeInvoiceSync.Status.DELIVERED, key
            [theirs] = self.fake.invoices_for(invoice.pk)
            assert theirs["id"] == invoice.stripe_invoice_id
            items = {
                i["metadata"]["line_id"]: i["amount"] for i in self.fake.items_of(theirs["id"])
            }
            assert items == {str(row.pk): row.amount_minor for row in invoice.lines.all()}, key
            assert theirs["total"] == invoice.total_minor == expected.total_minor, key
            assert theirs["status"] == expected.stripe_status, (
                f"{key}: Stripe says {theirs['status']}, expected {expected.stripe_status} "
                f"(ours is {invoice.status})"
            )
            # what the admin shows as Stripe's status, from API answers and webhooks
            assert invoice.stripe_sync.stripe_status == theirs["status"], key
        assert len(self.fake.invoices) == len(ours)  # nothing in Stripe that is not ours
        links = dict(
            StripeCustomer.objects.values_list("customer__external_id", "stripe_customer_id")
        )
        for customer in CUSTOMERS:
            for meter in METERS:
                total = (
                    self.fake.meter_total(f"{meter}_evt", links[customer])
                    if customer in links
                    else Decimal(0)
                )
                assert total == self.model.expected_meter_total(customer, meter), (customer, meter)

    @checked
    def one_summary_email_per_invoice(self):
        keys = [message.extra_headers.get("X-Billing-Notification", "") for message in mail.outbox]
        summaries = sorted(k for k in keys if k.startswith("usage-summary:"))
        invoice_ids = sorted(
            f"usage-summary:{pk}" for pk in Invoice.objects.values_list("pk", flat=True)
        )
        assert summaries == invoice_ids
        assert Notification.objects.filter(kind=Notification.Kind.USAGE_SUMMARY).count() == len(
            invoice_ids
        )


@pytest.fixture
def stateful_settings(settings, fake_stripe):  # noqa: F811
    settings.BILLING_BACKEND = "stripe"
    settings.STRIPE_COLLECTION_METHOD = "send_invoice"  # open in Stripe until paid there
    settings.STRIPE_USAGE_REPORTING = "close"
    settings.STRIPE_KEY_PREFIX = "stateful"
    settings.STRIPE_TIMEOUT = 0.5  # seconds: the timeout fault (0.8 s) outlasts it
    settings.BILLING_GRACE_PERIOD = int(GRACE.total_seconds())
    settings.BILLING_REVIEW_PERIOD = int(REVIEW.total_seconds())
    BillingMachine.fake = fake_stripe
    return settings


def test_billing_state_machine(stateful_settings):
    run_state_machine_as_test(BillingMachine, settings=RUN)


def test_void_here_reaches_stripe(stateful_settings):
    """The shortest sequence the machine finds failing, replayed as a plain test: finance
    staff void a finalized invoice that was delivered to Stripe (open there, so Stripe would
    still collect it). Stripe must end void too, and reconcile must find no difference."""
    machine = BillingMachine()
    try:
        machine.advance_clock(minutes=70, beat=True)  # the first hour closes: two drafts
        machine.advance_clock(minutes=20, beat=True)  # reviewed: finalized, delivered, open
        machine.check_invariants_now()
        machine.void_invoice(("acme", T0))
        machine.check_invariants_now()
    finally:
        machine.teardown()


def test_events_of_one_second_out_of_order(stateful_settings):
    """Stripe's `created` has whole seconds: invoice.finalized delivered after invoice.paid of
    the same second must not make the admin show the paid invoice as open in Stripe."""
    machine = BillingMachine()
    try:
        machine.advance_clock(minutes=70, beat=True)
        machine.advance_clock(minutes=20, beat=True)  # delivered: invoice.finalized sent
        machine.check_invariants_now()
        machine.stripe_webhook(("acme", T0), "paid")  # paid in the same second
        machine.check_invariants_now()
        [finalized, _] = machine.sent_events[("acme", T0)]
        machine.late_webhook(("acme", T0), finalized)
        machine.check_invariants_now()
    finally:
        machine.teardown()
