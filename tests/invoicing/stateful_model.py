"""The reference model of the billing system for the stateful test (test_stateful.py).

Plain Python, no database: the events the system accepted, the periods it closed, and the
invoices it should hold, line by line. It follows DESIGN.md, not the implementation:

- an event is billed once: on its period's invoice (a usage line) if it arrived before that
  period closed, otherwise as an adjustment on the customer's next invoice (the first period
  the next close closes), grouped by the window it belongs to (a closed period, or the time
  before the first period) and meter;
- a usage line's quantity is its meter's aggregate over the period (sum of quantities, or the
  number of events), an adjustment's the increase; amounts come from the rating function (the
  one pure function DESIGN names), an adjustment rated at the margin: rate(new total) -
  rate(old total) of its window;
- every period that ended more than the grace period ago closes, in order, with one invoice;
  its summary is sent at once; a draft is finalized at the first close at least the review
  period after that; a finalized invoice is delivered to Stripe, where it is open
  (send_invoice) until paid or voided; statuses only move forward.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from invoicing.rating import PriceSpec, rate

H = timedelta(hours=1)
# The window of usage from before a customer's first period (closing.BEFORE_FIRST_PERIOD).
BEFORE_FIRST_PERIOD = datetime(1970, 1, 1, tzinfo=UTC)

DRAFT, FINALIZED, PAID, VOID = "draft", "finalized", "paid", "void"
# What may follow each status, at any later time (itself included).
FORWARD = {
    DRAFT: {DRAFT, FINALIZED, PAID, VOID},
    FINALIZED: {FINALIZED, PAID, VOID},
    PAID: {PAID},
    VOID: {VOID},
}
# The status of ours that a Stripe invoice status stands for.
STRIPE_TO_OURS = {"open": FINALIZED, "paid": PAID, "void": VOID}

LineKey = tuple[str, datetime, str]  # (kind, window start, meter code)


@dataclass
class Event:
    customer: str
    event_id: str
    meter: str
    quantity: Decimal  # as stored (a count meter's default is 1)
    timestamp: datetime
    payload: dict  # exactly what was sent, to send it again
    billed_on: tuple[str, datetime] | None = None  # (line kind, invoice period start)


@dataclass
class Invoice:
    customer: str
    period_start: datetime
    finalize_after: datetime
    lines: dict[LineKey, tuple[Decimal, int]]  # -> (quantity, amount in minor units)
    status: str = DRAFT
    stripe_status: str | None = None  # None until delivered

    @property
    def total_minor(self) -> int:
        return sum(amount for _, amount in self.lines.values())


@dataclass
class BillingModel:
    t0: datetime  # the customers' subscription start, an hour boundary
    customers: tuple[str, ...]
    specs: dict[str, PriceSpec]  # meter code -> price
    counted: frozenset[str]  # meters that count events (the others sum quantities)
    grace: timedelta
    review: timedelta
    clock: datetime = field(init=False)
    closed_end: datetime | None = None  # the end of the last closed period (all customers)
    events: dict[tuple[str, str], Event] = field(default_factory=dict)
    invoices: dict[tuple[str, datetime], Invoice] = field(default_factory=dict)
    # (customer, window start, meter) -> the quantity billed for that window so far
    billed: dict[tuple[str, datetime, str], Decimal] = field(default_factory=dict)
    # (customer, meter) -> the billed quantity when usage was last reported to Stripe
    reported: dict[tuple[str, str], Decimal] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.clock = self.t0

    # --- time and windows ---------------------------------------------------------------

    @property
    def open_start(self) -> datetime:
        """The start of the earliest period not closed: on-time events are at or after it."""
        return self.closed_end or self.t0

    def window_of(self, timestamp: datetime) -> datetime:
        if timestamp < self.t0:
            return BEFORE_FIRST_PERIOD
        return self.t0 + H * ((timestamp - self.t0) // H)

    def measure(self, meter: str, events: list[Event]) -> Decimal:
        if meter in self.counted:
            return Decimal(len(events))
        return sum((e.quantity for e in events), Decimal(0))

    # --- steps --------------------------------------------------------------------------

    def accept(self, event: Event) -> None:
        key = (event.customer, event.event_id)
        assert key not in self.events, f"{key} sent as new twice by the test"
        self.events[key] = event

    def due_period_starts(self, now: datetime) -> list[datetime]:
        """The periods a close at `now` closes: every one that ended a grace period ago."""
        cutoff = now - self.grace
        start = self.open_start
        due = []
        while start + H <= cutoff:
            due.append(start)
            start += H
        return due

    def close(self, now: datetime) -> list[tuple[str, datetime]]:
        """Close the due periods (each customer's first one also bills its late events),
        send the summaries and finalize what is due; returns the invoices finalized."""
        due = self.due_period_starts(now)
        for customer in self.customers:
            unbilled = [
                e for e in self.events.values() if e.customer == customer and e.billed_on is None
            ]
            for index, start in enumerate(due):
                lines: dict[LineKey, tuple[Decimal, int]] = {}
                for meter, spec in self.specs.items():
                    mine = [
                        e
                        for e in unbilled
                        if e.meter == meter and self.window_of(e.timestamp) == start
                    ]
                    quantity = self.measure(meter, mine)
                    lines[("usage", start, meter)] = (quantity, rate(spec, quantity))
                    self.billed[(customer, start, meter)] = quantity
                    for e in mine:
                        e.billed_on = ("usage", start)
                if index == 0:
                    lines.update(self._adjustments(customer, start, unbilled))
                self.invoices[(customer, start)] = Invoice(
                    customer=customer,
                    period_start=start,
                    finalize_after=now + self.review,  # the summary goes out at once
                    lines=lines,
                )
        if due:
            self.closed_end = due[-1] + H
        finalized = []
        for key, invoice in sorted(self.invoices.items()):
            if invoice.status == DRAFT and invoice.finalize_after <= now:
                invoice.status = FINALIZED
                invoice.stripe_status = "open" if invoice.total_minor else "paid"
                finalized.append(key)
        return finalized

    def _adjustments(
        self, customer: str, start: datetime, unbilled: list[Event]
    ) -> dict[LineKey, tuple[Decimal, int]]:
        late: dict[tuple[datetime, str], list[Event]] = defaultdict(list)
        for e in unbilled:
            if e.billed_on is None and e.timestamp < start:
                late[(self.window_of(e.timestamp), e.meter)].append(e)
        lines = {}
        for (window, meter), events in sorted(late.items()):
            spec = self.specs[meter]
            before = self.billed.get((customer, window, meter), Decimal(0))
            increase = self.measure(meter, events)
            after = before + increase
            lines[("adjustment", window, meter)] = (
                increase,
                rate(spec, after) - rate(spec, before),
            )
            self.billed[(customer, window, meter)] = after
            for e in events:
                e.billed_on = ("adjustment", start)
        return lines

    def stripe_event(self, key: tuple[str, datetime], stripe_status: str) -> None:
        """A webhook carrying Stripe's status: ours follows, only forward (and never from
        draft: only we finalize)."""
        invoice = self.invoices[key]
        target = STRIPE_TO_OURS[stripe_status]
        if invoice.status != DRAFT and target in FORWARD[invoice.status]:
            invoice.status = target

    def void(self, key: tuple[str, datetime]) -> None:
        """Voided here: Stripe must not collect it either."""
        invoice = self.invoices[key]
        assert invoice.status == FINALIZED
        invoice.status = VOID
        invoice.stripe_status = "void"

    def report(self) -> None:
        """Usage reporting at close: Stripe's meters get what has been billed so far."""
        for customer in self.customers:
            for meter in self.specs:
                self.reported[(customer, meter)] = self.billed_quantity(customer, meter)

    # --- expectations ---------------------------------------------------------------------

    def billed_quantity(self, customer: str, meter: str) -> Decimal:
        return sum(
            (q for (c, _, m), q in self.billed.items() if c == customer and m == meter),
            Decimal(0),
        )

    def expected_meter_total(self, customer: str, meter: str) -> int:
        """Stripe's meter total: reports carry whole units, the fraction carried forward."""
        return math.floor(self.reported.get((customer, meter), Decimal(0)))

    def events_billed_quantity(self, customer: str, meter: str) -> Decimal:
        """The same figure from the events' side: each billed event counted once."""
        billed = [
            e
            for e in self.events.values()
            if e.customer == customer and e.meter == meter and e.billed_on is not None
        ]
        return self.measure(meter, billed)
