"""The billing cycle: one service for beat, `manage.py close_periods` and the admin; the
command takes a period from open to a finalized invoice delivered to the backend with no
worker running, prints what it did and what waits, and a second run does nothing."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
import time_machine
from django.contrib import messages
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.test import Client, override_settings
from django.urls import reverse

from audit.models import AuditEntry
from billing_cycle import tasks as cycle_tasks
from billing_cycle.services import Outcome, Step, run_billing_cycle
from invoicing import tasks as invoicing_tasks
from invoicing.models import BillingPeriod, Invoice, StripeInvoiceSync
from invoicing.services import invoices
from notifications.models import Notification
from tests.invoicing.conftest import T0
from tests.invoicing.test_closing import usage_events

H = timedelta(hours=1)
T1 = T0 + H + timedelta(minutes=10)  # the first hour is due: its end plus the grace period
T2 = T1 + timedelta(minutes=31)  # past the review period of a draft made at T1
GRACE = {"BILLING_GRACE_PERIOD": 600, "BILLING_REVIEW_PERIOD": 1800}


def close_periods(at) -> tuple[list[str], str]:
    """Run the command with --now; its printed lines and its stderr."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("close_periods", "--now", at.isoformat(), stdout=out, stderr=err)
    except CommandError as exc:
        err.write(f"CommandError: {exc}\n")
    return out.getvalue().splitlines(), err.getvalue()


def history() -> tuple:
    """What a run could change: periods, invoices, messages, audit entries."""
    return (
        list(BillingPeriod.objects.order_by("pk").values_list("pk", "status", "closed_at")),
        list(
            Invoice.objects.order_by("pk").values_list(
                "pk", "status", "number", "summary_sent_at", "finalize_after"
            )
        ),
        list(Notification.objects.order_by("pk").values_list("pk", "status")),
        AuditEntry.objects.count(),
    )


@pytest.mark.django_db(transaction=True)
@override_settings(**GRACE)
def test_close_periods_twice_with_no_worker_delivers_to_stripe(
    subscribed, record, fake_stripe, settings, no_worker, mailoutbox
):
    settings.BILLING_BACKEND = "stripe"
    settings.STRIPE_KEY_PREFIX = "cycle"
    settings.STRIPE_USAGE_REPORTING = "off"
    fake_stripe.cards_for_new_customers = True
    record(usage_events(), now=T0 + timedelta(minutes=20))
    first = BillingPeriod.objects.get(start=T0)

    with time_machine.travel(T1, tick=True):
        printed, errors = close_periods(T1)
    draft = Invoice.objects.get(period=first)
    assert (draft.status, draft.total_minor, draft.number) == ("draft", 2915, None)
    assert draft.summary_sent_at is not None and T1 <= draft.summary_sent_at < T1 + H
    assert draft.finalize_after == draft.summary_sent_at + timedelta(seconds=1800)
    assert [(m.to, m.subject) for m in mailoutbox] == [
        (["billing@acme.example"], "Your usage for 2026-11-02 10:00 UTC: $29.15")
    ]
    assert printed == [
        "billing cycle at 2026-11-02T11:10:00+00:00",
        "closed 1 period(s), sent 1 usage summary(ies), finalized 0 invoice(s), delivered 0 "
        "invoice(s), reported 0 usage report(s); 1 waiting, 0 failure(s)",
        "done:",
        f"  close        period acme 2026-11-02 10:00 to 2026-11-02 11:00 (UTC): closed into draft "
        f"#{draft.pk} (total $29.15)",
        f"  summary      draft #{draft.pk} of acme: usage summary sent to billing@acme.example",
        "waiting:",
        f"  finalize     draft #{draft.pk} of acme: waits for its review period until "
        f"{draft.finalize_after.isoformat()}",
    ]
    assert errors == ""
    assert fake_stripe.requests == []

    with time_machine.travel(T2, tick=True):
        printed, errors = close_periods(T2)
    invoice = Invoice.objects.get(period=first)
    [stripe_invoice] = fake_stripe.invoices_for(invoice.pk)
    sync = StripeInvoiceSync.objects.get(invoice=invoice)
    assert (invoice.status, invoice.number, invoice.finalized_at) == (
        "finalized",
        "INV-2026-000001",
        T2,
    )
    assert invoice.stripe_invoice_id == stripe_invoice["id"]
    assert stripe_invoice["total"] == 2915 and sync.status == "delivered"
    assert printed == [
        "billing cycle at 2026-11-02T11:41:00+00:00",
        "closed 0 period(s), sent 0 usage summary(ies), finalized 1 invoice(s), delivered 1 "
        "invoice(s), reported 0 usage report(s); 0 waiting, 0 failure(s)",
        "done:",
        f"  finalize     draft #{invoice.pk} of acme: finalized as INV-2026-000001 (total $29.15)",
        f"  delivery     INV-2026-000001 of acme: delivered to Stripe as {stripe_invoice['id']} "
        f"({sync.stripe_status})",
    ]
    assert errors == ""

    # Run again for the same instant: nothing to do, nothing changes.
    before, requests = history(), len(fake_stripe.requests)
    with time_machine.travel(T2, tick=True):
        printed, errors = close_periods(T2)
    assert printed == [
        "billing cycle at 2026-11-02T11:41:00+00:00",
        "closed 0 period(s), sent 0 usage summary(ies), finalized 0 invoice(s), delivered 0 "
        "invoice(s), reported 0 usage report(s); 0 waiting, 0 failure(s)",
    ]
    assert (history(), len(fake_stripe.requests), len(mailoutbox)) == (before, requests, 1)

    # What was queued for a worker (the finalization's delivery task) was never needed; a
    # worker started later finds it done.
    assert no_worker == [("invoicing.deliver_invoice", (invoice.pk,))]
    with time_machine.travel(T2 + timedelta(minutes=1), tick=True):
        invoicing_tasks.deliver_invoice.run(invoice.pk)
    assert (history(), len(fake_stripe.requests)) == (before, requests)


@pytest.mark.django_db(transaction=True)
@override_settings(**GRACE)
def test_a_failed_delivery_is_printed_and_the_command_fails(
    subscribed, record, fake_stripe, settings, no_worker
):
    settings.BILLING_BACKEND = "stripe"
    settings.STRIPE_KEY_PREFIX = "cycle"
    settings.BILLING_REVIEW_PERIOD = 0
    fake_stripe.cards_for_new_customers = True
    record(usage_events(), now=T0 + timedelta(minutes=20))
    fake_stripe.inject("500", path=r"/v1/customers", times=1)

    with time_machine.travel(T1, tick=False):
        printed, errors = close_periods(T1)
    invoice = Invoice.objects.get(period__start=T0)
    assert (invoice.status, invoice.number) == ("finalized", "INV-2026-000001")
    assert printed[1] == (
        "closed 1 period(s), sent 1 usage summary(ies), finalized 1 invoice(s), delivered 0 "
        "invoice(s), reported 0 usage report(s); 0 waiting, 1 failure(s)"
    )
    assert errors.splitlines() == [
        "failed:",
        "  delivery     INV-2026-000001 of acme: delivery to the stripe backend failed: "
        "TransientStripeError: APIError: An unknown error occurred (a worker retries it)",
        "CommandError: 1 step(s) failed",
    ]
    assert fake_stripe.invoices_for(invoice.pk) == []
    # The delivery task queued by the finalization retries it once a worker runs.
    assert no_worker == [("invoicing.deliver_invoice", (invoice.pk,))]
    with time_machine.travel(T1 + timedelta(minutes=1), tick=False):
        invoicing_tasks.deliver_invoice.run(invoice.pk)
    assert StripeInvoiceSync.objects.get(invoice=invoice).status == "delivered"


@pytest.mark.django_db
@override_settings(BILLING_GRACE_PERIOD=0, BILLING_REVIEW_PERIOD=0)
def test_with_no_review_period_one_run_does_it_all_and_the_second_nothing(
    subscribed, record, no_worker, mailoutbox, django_capture_on_commit_callbacks
):
    record(usage_events(), now=T0 + timedelta(minutes=20))
    at = T0 + H

    with (
        time_machine.travel(at, tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        printed, errors = close_periods(at)
    invoice = Invoice.objects.get(period__start=T0)
    assert (invoice.status, invoice.number, invoice.summary_sent_at, invoice.finalized_at) == (
        "finalized",
        "INV-2026-000001",
        at,
        at,
    )
    assert printed == [
        "billing cycle at 2026-11-02T11:00:00+00:00",
        "closed 1 period(s), sent 1 usage summary(ies), finalized 1 invoice(s), delivered 1 "
        "invoice(s), reported 0 usage report(s); 0 waiting, 0 failure(s)",
        "done:",
        f"  close        period acme 2026-11-02 10:00 to 2026-11-02 11:00 (UTC): closed into draft "
        f"#{invoice.pk} (total $29.15)",
        f"  summary      draft #{invoice.pk} of acme: usage summary sent to billing@acme.example",
        f"  finalize     draft #{invoice.pk} of acme: finalized as INV-2026-000001 (total $29.15)",
        "  delivery     INV-2026-000001 of acme: kept here (the local backend: our records are "
        "the books)",
    ]
    # the usage summary, then the invoice with its PDF
    assert errors == "" and len(mailoutbox) == 2
    assert mailoutbox[1].attachments[0][0] == "invoice-INV-2026-000001.pdf"

    before = history()
    with time_machine.travel(at, tick=False):
        printed, errors = close_periods(at)
    assert printed[1:] == [
        "closed 0 period(s), sent 0 usage summary(ies), finalized 0 invoice(s), delivered 0 "
        "invoice(s), reported 0 usage report(s); 0 waiting, 0 failure(s)"
    ]
    assert (history(), errors, len(mailoutbox)) == (before, "", 2)
    invoice_email = Notification.objects.get(kind="invoice", invoice_id=invoice.pk)
    assert no_worker == [
        ("notifications.send_notification", (invoice_email.pk,)),  # sent inline already
        ("invoicing.deliver_invoice", (invoice.pk,)),
    ]


@pytest.mark.django_db
@override_settings(**GRACE)
def test_what_waits_is_printed_with_its_reason(subscribed, record, no_worker, mailoutbox):
    """A period in its grace period, a draft whose summary could not be sent (the provider
    refused it), a draft in its review period."""
    record(usage_events(), now=T0 + timedelta(minutes=20))
    with time_machine.travel(T1, tick=False):
        close_periods(T1)  # the first hour: draft, summary sent, in review until T1 + 30 min
    first = Invoice.objects.get(period__start=T0)
    at = T0 + 2 * H + timedelta(minutes=5)  # the second hour has ended, within its grace

    with time_machine.travel(at, tick=False):
        printed, errors = close_periods(at)
    second = BillingPeriod.objects.get(start=T0 + H)
    assert printed[1:] == [
        "closed 0 period(s), sent 0 usage summary(ies), finalized 1 invoice(s), delivered 1 "
        "invoice(s), reported 0 usage report(s); 1 waiting, 0 failure(s)",
        "done:",
        f"  finalize     draft #{first.pk} of acme: finalized as INV-2026-000001 (total $29.15)",
        "  delivery     INV-2026-000001 of acme: kept here (the local backend: our records are "
        "the books)",
        "waiting:",
        "  close        period acme 2026-11-02 11:00 to 2026-11-02 12:00 (UTC): ended "
        "2026-11-02T12:00:00+00:00; closes after its grace period for late events, at "
        "2026-11-02T12:10:00+00:00",
    ]
    assert second.status == "closing"

    at = T0 + 2 * H + timedelta(minutes=10)
    with (
        time_machine.travel(at, tick=False),
        override_settings(EMAIL_BACKEND="tests.billing_cycle.test_billing_cycle.RefusingBackend"),
    ):
        printed, errors = close_periods(at)
    draft = Invoice.objects.get(period=second)
    message = Notification.objects.get(invoice_id=draft.pk)
    assert (draft.status, draft.summary_sent_at, message.status, message.attempts) == (
        "draft",
        None,
        "pending",
        1,
    )
    assert printed[1:] == [
        "closed 1 period(s), sent 0 usage summary(ies), finalized 0 invoice(s), delivered 0 "
        "invoice(s), reported 0 usage report(s); 1 waiting, 1 failure(s)",
        "done:",
        f"  close        period acme 2026-11-02 11:00 to 2026-11-02 12:00 (UTC): closed into draft "
        f"#{draft.pk} (total $5.00)",
        "waiting:",
        f"  finalize     draft #{draft.pk} of acme: waits for its usage summary: queued at "
        f"{message.created_at.isoformat()}, not sent yet (last attempt: SMTPServerDisconnected: "
        "the provider is down)",
    ]
    assert errors.splitlines() == [
        "failed:",
        f"  summary      draft #{draft.pk} of acme: usage summary not sent: "
        "SMTPServerDisconnected: the provider is down (the next run tries again)",
        "CommandError: 1 step(s) failed",
    ]
    # finalize_invoice itself refuses the draft while its summary has not gone out
    with pytest.raises(invoices.SummaryNotSent, match="has not had the usage summary yet"):
        invoices.finalize_invoice(invoice_id=draft.pk, now=at + H)

    # the next run sends it
    with time_machine.travel(at + timedelta(minutes=1), tick=False):
        printed, errors = close_periods(at + timedelta(minutes=1))
    assert (
        f"  summary      draft #{draft.pk} of acme: usage summary sent to billing@acme.example"
        in printed
    )
    assert errors == "" and Notification.objects.get(pk=message.pk).status == "sent"


class RefusingBackend:
    """An e-mail backend whose provider is down."""

    def __init__(self, **kwargs):
        pass

    def send_messages(self, messages):
        import smtplib

        raise smtplib.SMTPServerDisconnected("the provider is down")


# --- Beat: the same cycle, with workers --------------------------------------------------------


@pytest.mark.django_db
@override_settings(**GRACE)
def test_the_beat_task_runs_the_cycle_and_queues_for_workers(
    subscribed, record, django_capture_on_commit_callbacks, mailoutbox
):
    record(usage_events(), now=T0 + timedelta(minutes=20))
    zero = {
        "closed": 0,
        "usage_reports": 0,
        "summaries": 0,
        "finalized": 0,
        "delivered": 0,
        "waiting": 0,
        "failed": 0,
    }
    with (
        time_machine.travel(T1, tick=False),
        django_capture_on_commit_callbacks(execute=True) as queued,
    ):
        assert cycle_tasks.run_billing_cycle.apply().get() == {**zero, "closed": 1, "summaries": 1}
    assert len(queued) == 1 and len(mailoutbox) == 1  # the summary's send, run by a "worker"
    invoice = Invoice.objects.get(period__start=T0)
    assert invoice.summary_sent_at == T1

    with (
        time_machine.travel(T2, tick=False),
        django_capture_on_commit_callbacks(execute=True) as queued,
    ):
        assert cycle_tasks.run_billing_cycle.apply().get() == {
            **zero,
            "finalized": 1,
            "delivered": 1,
        }
        assert cycle_tasks.run_billing_cycle.apply().get() == zero
    assert len(queued) == 2  # the delivery and the invoice e-mail, queued once
    invoice.refresh_from_db()
    assert (invoice.status, invoice.number) == ("finalized", "INV-2026-000001")


@pytest.mark.django_db
@override_settings(**GRACE)
def test_the_report_names_each_step(subscribed, record):
    record(usage_events(), now=T0 + timedelta(minutes=20))
    report = run_billing_cycle(now=T1)
    [close] = report.select(step=Step.CLOSE)
    invoice = Invoice.objects.get(period__start=T0)
    assert (close.outcome, close.period_id, close.invoice_id) == (
        Outcome.DONE,
        invoice.period_id,
        invoice.pk,
    )
    assert [(e.step, e.outcome) for e in report.entries] == [
        (Step.CLOSE, Outcome.DONE),
        (Step.SUMMARY, Outcome.DONE),
        (Step.FINALIZE, Outcome.WAITING),
    ]
    assert (
        str(report.entries[1])
        == f"draft #{invoice.pk} of acme: usage summary queued (a worker sends it)"
    )
    assert str(report.entries[2]).startswith(
        f"draft #{invoice.pk} of acme: waits for its usage summary: queued at "
    )


# --- The admin's "Close now" ------------------------------------------------------------------


@pytest.mark.django_db
@override_settings(BILLING_GRACE_PERIOD=600, BILLING_REVIEW_PERIOD=0)
def test_close_now_in_the_admin_runs_the_cycle_for_the_selection(subscribed, record):
    user = User.objects.create_user("fran", password="not-used", is_staff=True)
    user.groups.add(Group.objects.get(name="Finance"))
    finance = Client()
    finance.force_login(user)
    record(usage_events(), now=T0 + timedelta(minutes=20))
    period = BillingPeriod.objects.get(start=T0)
    url = reverse("admin:invoicing_billingperiod_changelist")
    action = {"action": "close_now", "_selected_action": [str(period.pk)], "index": "0"}

    with time_machine.travel(T1, tick=False):
        response = finance.post(url, action, follow=True)
    invoice = Invoice.objects.get(period=period)
    assert [(m.level, str(m)) for m in response.context["messages"]] == [
        (messages.SUCCESS, f"Closed: {period}")
    ]
    assert Notification.objects.filter(invoice_id=invoice.pk, status="pending").count() == 1

    invoices.mark_summary_sent(invoice_id=invoice.pk, at=T1)  # the worker sent it
    with time_machine.travel(T1 + timedelta(minutes=1), tick=False):
        response = finance.post(url, action, follow=True)
    assert [(m.level, str(m)) for m in response.context["messages"]] == [
        (messages.INFO, f"Already closed: {period}"),
        (
            messages.SUCCESS,
            f"Finalized: draft #{invoice.pk} of acme: finalized as INV-2026-000001 (total $29.15)",
        ),
    ]
    requested = AuditEntry.objects.filter(action="admin.period_close_requested").order_by("pk")
    assert [e.data for e in requested] == [
        {"outcome": "closed", "invoice_id": invoice.pk},
        {"outcome": "already", "invoice_id": invoice.pk},
    ]
