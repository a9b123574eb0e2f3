"""The itemized usage summary: one e-mail per draft, equal to the invoice, sent once; finalization
waits for it and for the review period; finance staff can resend it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from audit.models import AuditEntry
from invoicing.models import Invoice
from invoicing.services import closing, invoices
from metering.currencies import format_minor
from metering.serializers import decimal_text
from notifications import services, tasks
from notifications.models import Notification
from tests.invoicing.conftest import T0

pytestmark = pytest.mark.django_db
H = timedelta(hours=1)
M = timedelta(minutes=1)
S = timedelta(seconds=1)
CLOSE_AT = T0 + H + 10 * M  # the first hour's close (end + grace)
SEND_AT = T0 + H + 15 * M  # the summary beat run
CHARGE_AFTER = SEND_AT + timedelta(seconds=1800)  # the review period runs from the summary


def _event(event_id: str, meter: str, quantity: str | None, minutes: int) -> dict:
    event = {
        "event_id": event_id,
        "customer_id": "acme",
        "meter": meter,
        "timestamp": (T0 + minutes * M).isoformat(),
    }
    if quantity is not None:
        event["quantity"] = quantity
    return event


EVENTS = [
    _event("t1", "agent_tasks", None, 5),
    _event("t2", "agent_tasks", None, 6),
    _event("t3", "agent_tasks", None, 7),
    _event("k1", "llm_tokens", "900000", 5),
    _event("k2", "llm_tokens", "600000.5", 14),
    _event("m1", "agent_minutes", "61", 5),
]
# The invoice of the first hour (see tests/invoicing/test_closing.py for the arithmetic).
EXPECTED_TEXT_LINES = [
    "- Agent Minutes: 61 minute ($1.50 per 60 minutes, rounded up: 2 packages; "
    "minimum $5.00 applied) = $5.00",
    "- Agent Tasks: 3 task ($0.05 per task) = $0.15",
    "- Llm Tokens: 1500000.5 token (Graduated tiers: 1,000,000 tokens at $0.00002 (tier 1), "
    "400,000.5 tokens at $0.00001 (tier 2); first 100,000 tokens included) = $24.00",
]


@pytest.fixture(autouse=True)
def _periods(settings):
    settings.BILLING_GRACE_PERIOD = 600
    settings.BILLING_REVIEW_PERIOD = 1800


@pytest.fixture
def draft(subscribed, record, clock):
    """The first hour closed with EVENTS: a draft of 2915 minor units, no summary yet."""
    record(EVENTS, now=T0 + 20 * M)
    clock.move_to(CLOSE_AT)
    closing.close_due_periods(now=CLOSE_AT)
    clock.move_to(SEND_AT)
    invoice = Invoice.objects.get(period__start=T0)
    assert (invoice.status, invoice.total_minor, invoice.summary_sent_at) == ("draft", 2915, None)
    return invoice


def _queue(capture) -> int:
    """One beat run of the summary task, with the sends queued on commit run."""
    with capture(execute=True):
        return services.queue_usage_summaries()


def _summary_audits(invoice: Invoice) -> int:
    return AuditEntry.objects.filter(
        action="invoice.summary_sent", object_id=str(invoice.pk)
    ).count()


def test_summary_lines_and_total_equal_the_invoice(
    draft, django_capture_on_commit_callbacks, mailoutbox
):
    assert _queue(django_capture_on_commit_callbacks) == 1

    assert len(mailoutbox) == 1
    message = mailoutbox[0]
    assert message.to == ["billing@acme.example"]
    assert message.subject == "Your usage for 2026-11-02 10:00 UTC: $29.15"
    # plain text: every invoice line, the total, when it is charged, the portal
    assert [line for line in message.body.splitlines() if line.startswith("- ")] == (
        EXPECTED_TEXT_LINES
    )
    assert "\nTotal: $29.15\n" in message.body
    assert "Your itemized usage for 2026-11-02 10:00 to 2026-11-02 11:00 (UTC)." in message.body
    assert f"It will be charged after {CHARGE_AFTER:%Y-%m-%d %H:%M} UTC." in message.body
    assert f"http://127.0.0.1:8000/portal/invoices/{draft.pk}/" in message.body
    # HTML: the same amounts
    assert [mimetype for _, mimetype in message.alternatives] == ["text/html"]
    html = message.alternatives[0][0]
    for amount in ("$5.00", "$0.15", "$24.00", "$29.15"):
        assert f">{amount}</td>" in html
    assert f"{CHARGE_AFTER:%Y-%m-%d %H:%M} UTC" in html

    # the summary's lines are the invoice's lines, one for one, and so is the total
    notification = Notification.objects.get()
    context = notification.context
    invoice_lines = [
        {
            "kind": line.kind,
            "description": line.description,
            "quantity": decimal_text(line.quantity),
            "amount": format_minor(line.amount_minor, "USD"),
            "amount_minor": line.amount_minor,
        }
        for line in draft.lines.order_by("position")
    ]
    assert [
        {key: line[key] for key in ("kind", "description", "quantity", "amount", "amount_minor")}
        for line in context["lines"]
    ] == invoice_lines
    assert [line["amount"] for line in context["lines"]] == ["$5.00", "$0.15", "$24.00"]
    assert (context["total_minor"], context["total"]) == (draft.total_minor, "$29.15")
    assert sum(line["amount_minor"] for line in context["lines"]) == draft.total_minor

    assert (notification.kind, notification.status, notification.invoice_id) == (
        "usage_summary",
        "sent",
        draft.pk,
    )
    assert (notification.key, notification.attempts) == (f"usage-summary:{draft.pk}", 1)
    draft.refresh_from_db()
    assert draft.summary_sent_at == SEND_AT == notification.sent_at
    assert _summary_audits(draft) == 1


def test_summary_is_sent_once_under_retries(draft, django_capture_on_commit_callbacks, mailoutbox):
    # two beat runs before either send ran: one row, one send
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.queue_usage_summaries()
        services.queue_usage_summaries()
    assert len(callbacks) == 1
    assert Notification.objects.count() == 1 and len(mailoutbox) == 1

    # later beat runs find nothing to do; a redelivered send task sends nothing
    assert _queue(django_capture_on_commit_callbacks) == 0
    assert _queue(django_capture_on_commit_callbacks) == 0
    notification = Notification.objects.get()
    tasks.send_notification(notification.pk)
    tasks.send_notification.delay(notification.pk)
    assert services.send_notification(notification_id=notification.pk).status == "sent"

    assert len(mailoutbox) == 1 and Notification.objects.count() == 1
    notification.refresh_from_db()
    assert (notification.status, notification.attempts) == ("sent", 1)
    draft.refresh_from_db()
    assert draft.summary_sent_at == SEND_AT
    assert _summary_audits(draft) == 1


def test_finalization_waits_for_the_summary_and_the_review_period(
    draft, django_capture_on_commit_callbacks, mailoutbox
):
    # review period long over, but no summary sent: nothing is finalized, twice
    assert invoices.finalize_due_invoices(now=T0 + 5 * H).finalized == []
    assert invoices.finalize_due_invoices(now=T0 + 5 * H).finalized == []
    draft.refresh_from_db()
    assert (draft.status, draft.number, draft.finalized_at) == ("draft", None, None)
    assert not AuditEntry.objects.filter(action="invoice.finalized").exists()

    _queue(django_capture_on_commit_callbacks)
    assert len(mailoutbox) == 1
    # summary sent, review period not over yet (it ends at the summary + 1800 s)
    assert invoices.finalize_due_invoices(now=CHARGE_AFTER - timedelta(seconds=1)).finalized == []
    draft.refresh_from_db()
    assert (draft.status, draft.number) == ("draft", None)

    assert invoices.finalize_due_invoices(now=CHARGE_AFTER).finalized == [draft.pk]
    assert invoices.finalize_due_invoices(now=CHARGE_AFTER).finalized == []
    draft.refresh_from_db()
    assert (draft.status, draft.number, draft.finalized_at) == (
        "finalized",
        "INV-2026-000001",
        CHARGE_AFTER,
    )
    assert AuditEntry.objects.filter(action="invoice.finalized").count() == 1


def test_customer_without_emails_is_skipped_without_blocking_finalization(
    draft, django_capture_on_commit_callbacks, mailoutbox
):
    draft.customer.emails = []
    draft.customer.save()

    assert _queue(django_capture_on_commit_callbacks) == 1
    assert _queue(django_capture_on_commit_callbacks) == 0

    assert mailoutbox == []
    notification = Notification.objects.get()
    assert (notification.status, notification.recipients, notification.sent_at) == (
        "skipped",
        [],
        None,
    )
    draft.refresh_from_db()
    assert draft.summary_sent_at == SEND_AT
    assert _summary_audits(draft) == 1
    assert invoices.finalize_due_invoices(now=CHARGE_AFTER).finalized == [draft.pk]


def test_finance_resend_sends_again_as_a_new_row(
    draft, django_capture_on_commit_callbacks, mailoutbox
):
    _queue(django_capture_on_commit_callbacks)
    original = Notification.objects.get()

    with django_capture_on_commit_callbacks(execute=True):
        first = services.resend_notification(notification=original)
    with django_capture_on_commit_callbacks(execute=True):
        second = services.resend_notification(notification=original)

    assert [n.key for n in Notification.objects.order_by("pk")] == [
        f"usage-summary:{draft.pk}",
        f"usage-summary:{draft.pk}:resend:1",
        f"usage-summary:{draft.pk}:resend:2",
    ]
    first.refresh_from_db()
    second.refresh_from_db()
    assert [first.status, second.status] == ["sent", "sent"]
    assert first.invoice_id == second.invoice_id == draft.pk
    assert len(mailoutbox) == 3
    assert {m.subject for m in mailoutbox} == {original.subject}
    assert mailoutbox[2].body == mailoutbox[0].body
    assert mailoutbox[2].to == ["billing@acme.example"]
    # the original row and the invoice's summary record are unchanged
    original_before = (original.status, original.sent_at)
    original.refresh_from_db()
    assert (original.status, original.sent_at) == original_before
    draft.refresh_from_db()
    assert draft.summary_sent_at == SEND_AT
    assert _summary_audits(draft) == 1


def test_a_lost_send_is_queued_again_and_sent_once(
    draft, settings, django_capture_on_commit_callbacks, mailoutbox
):
    """The send task's message is lost (the on-commit queueing never runs): the summary task
    queues pending messages again once they are older than BILLING_NOTIFICATION_RETRY_AFTER,
    and the atomic claim keeps a message queued twice from being sent twice."""
    settings.BILLING_NOTIFICATION_RETRY_AFTER = 60
    services.queue_usage_summaries()  # on-commit callbacks dropped: the send is "lost"
    notification = Notification.objects.get()
    assert notification.status == "pending" and mailoutbox == []

    assert services.requeue_stale_messages(now=notification.updated_at + 30 * S) == 0
    assert services.requeue_stale_messages(now=notification.updated_at + 61 * S) == 1
    assert services.requeue_stale_messages(now=notification.updated_at + 62 * S) == 0
    notification.refresh_from_db()
    assert notification.status == "sent" and len(mailoutbox) == 1
    tasks.send_notification(notification.pk)  # a second copy of the message: no second mail
    assert len(mailoutbox) == 1


def test_summary_times_are_in_the_customer_zone_named(
    draft, django_capture_on_commit_callbacks, mailoutbox
):
    """Like the portal: a Berlin customer reads its period in Berlin time, with the zone named
    (the hour 10:00 UTC is 11:00 in Berlin in November)."""
    customer = draft.customer
    customer.timezone = "Europe/Berlin"
    customer.save(update_fields=["timezone"])
    _queue(django_capture_on_commit_callbacks)

    message = mailoutbox[0]
    assert message.subject == "Your usage for 2026-11-02 11:00 Europe/Berlin: $29.15"
    period = "2026-11-02 11:00 to 2026-11-02 12:00 (Europe/Berlin)"
    assert f"Your itemized usage for {period}." in message.body
    charge_after = CHARGE_AFTER + H  # Berlin is UTC+1 in November
    assert f"charged after {charge_after:%Y-%m-%d %H:%M} Europe/Berlin." in message.body
    assert period in message.alternatives[0][0]
    assert "(UTC)" not in message.body
