"""The promises every end-to-end scenario checks after its fault, against the real books:

1. unique events sent == events stored == billed quantity (each event billed by exactly one
   aggregate and so one invoice line);
2. one invoice per period, each due period closed exactly once (one `period.closed` entry);
3. Stripe's invoices equal ours (one per finalized invoice, same total, one item per line);
4. one e-mail per notification (the SMTP server's messages, by the notification key header);
5. `manage.py reconcile` exits 0.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from decimal import Decimal

from django.db import connection
from django.db.models import Count

from audit.models import AuditEntry
from invoicing.models import BillingPeriod, Invoice, InvoiceLine
from metering.models import UsageEvent
from notifications.models import Notification
from tests.e2e.fleet import Ledger
from tests.e2e.stack import Stack

# Events billed by no aggregate, or by more than one (a watermark or window bug).
_EVENTS_NOT_BILLED_ONCE = """
SELECT e.id, e.event_id, count(a.id)
FROM metering_usageevent e
LEFT JOIN metering_usageaggregate a
  ON a.customer_id = e.customer_id AND a.meter_id = e.meter_id
 AND e.timestamp >= a.window_start AND e.timestamp < a.window_end
 AND e.id > a.event_pk_after AND e.id <= a.event_pk_through
GROUP BY e.id, e.event_id
HAVING count(a.id) <> 1
ORDER BY e.id
LIMIT 20
"""


def assert_events_stored_and_billed(ledger: Ledger) -> None:
    stored = {
        (customer, event_id): (meter, quantity)
        for customer, event_id, meter, quantity in UsageEvent.objects.values_list(
            "customer__external_id", "event_id", "meter__code", "quantity"
        )
    }
    assert len(stored) == UsageEvent.objects.count()  # no event stored twice
    missing = sorted(set(ledger.events) - set(stored))[:10]
    extra = sorted(set(stored) - set(ledger.events))[:10]
    assert not missing and not extra, f"sent but not stored: {missing}; stored unsent: {extra}"
    assert stored == ledger.events

    with connection.cursor() as cursor:
        cursor.execute(_EVENTS_NOT_BILLED_ONCE)
        not_once = cursor.fetchall()
    assert not_once == [], f"events not billed exactly once (id, event id, aggregates): {not_once}"

    billed: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for customer, meter, quantity in InvoiceLine.objects.filter(
        kind__in=[InvoiceLine.Kind.USAGE, InvoiceLine.Kind.ADJUSTMENT]
    ).values_list("invoice__customer__external_id", "meter__code", "quantity"):
        billed[(customer, meter)] += quantity
    sent = {key: q for key, (_, q) in ledger.totals().items()}
    billed_nonzero = {key: q for key, q in billed.items() if q}
    assert billed_nonzero == sent, f"billed {dict(billed_nonzero)} != sent {sent}"


def assert_periods_closed_once(*, due_before: datetime) -> None:
    """Every period that ended by `due_before` is closed, with one invoice and one close."""
    closed = BillingPeriod.objects.filter(status=BillingPeriod.Status.CLOSED)
    due = BillingPeriod.objects.filter(end__lte=due_before)
    assert set(due.values_list("pk", flat=True)) <= set(closed.values_list("pk", flat=True)), (
        "due periods left open: "
        f"{list(due.exclude(status=BillingPeriod.Status.CLOSED).values_list('pk', 'status'))}"
    )
    per_period = Counter(Invoice.objects.values_list("period_id", flat=True))
    assert set(per_period) == set(closed.values_list("pk", flat=True))
    assert set(per_period.values()) <= {1}
    closes = Counter(
        AuditEntry.objects.filter(action="period.closed").values_list("object_id", flat=True)
    )
    assert closes == Counter({str(pk): 1 for pk in closed.values_list("pk", flat=True)}), closes


def assert_stripe_matches(stack: Stack) -> None:
    """Each invoice we finalized is one Stripe invoice with our total and one item per line."""
    fake = stack.stripe
    ours = Invoice.objects.exclude(status=Invoice.Status.DRAFT).prefetch_related("lines")
    ours_total = 0
    for invoice in ours:
        copies = fake.invoices_for(invoice.pk)
        assert len(copies) == 1, f"invoice {invoice.number}: {len(copies)} Stripe invoices"
        [theirs] = copies
        assert theirs["id"] == invoice.stripe_invoice_id
        assert theirs["total"] == invoice.total_minor, (invoice.number, theirs["total"])
        items = Counter(i["metadata"]["line_id"] for i in fake.items_of(theirs["id"]))
        lines = Counter(str(line.pk) for line in invoice.lines.all())
        assert items == lines, f"invoice {invoice.number}: Stripe items {items}, lines {lines}"
        ours_total += invoice.total_minor
    with fake.lock:
        stray = [i["id"] for i in fake.invoices.values() if not i["metadata"].get("invoice_id")]
        theirs_total = sum(fake._invoice_view(i)["total"] for i in fake.invoices.values())
    assert stray == []
    assert theirs_total == ours_total


def assert_one_mail_per_notification(stack: Stack) -> None:
    notifications = Notification.objects.all()
    unsent = list(notifications.exclude(status=Notification.Status.SENT).values("key", "status"))
    assert unsent == [], f"notifications not sent: {unsent}"
    mailed = Counter(m["X-Billing-Notification"] for m in stack.mail.snapshot())
    assert mailed == Counter(notifications.values_list("key", flat=True)), mailed


def assert_reconciled(stack: Stack) -> None:
    result = stack.reconcile()
    assert result.returncode == 0, f"reconcile: {result.stdout}{result.stderr[-3000:]}"
    assert "OK" in result.stdout


def assert_invariants(stack: Stack, ledger: Ledger, *, due_before: datetime) -> None:
    """All five promises (see the module docstring)."""
    assert_events_stored_and_billed(ledger)
    assert_periods_closed_once(due_before=due_before)
    assert_stripe_matches(stack)
    assert_one_mail_per_notification(stack)
    assert_reconciled(stack)


def invoice_statuses() -> dict[str, int]:
    return dict(Invoice.objects.values_list("status").annotate(n=Count("id")))
