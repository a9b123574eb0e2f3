"""The billing cycle (DESIGN section 5): close due periods, send their usage summaries,
finalize the reviewed drafts and hand them to the billing backend, in one service that the
beat task, `manage.py close_periods` and the admin's "Close now" all call.

Why an app of its own: the cycle closes and finalizes (invoicing) and sends summaries
(notifications), and notifications may import invoicing, never the reverse; the one place
that may call both sits above them, and nothing imports it back. It holds no billing rule:
each step calls the service that owns its rule (invoicing.services.closing and invoices,
invoicing.stripe.usage_reports, notifications.services); the cycle orders the steps and
reports on them.

Two ways to run it:
- with workers (beat, the admin): summaries, Stripe usage reports and deliveries are queued
  after commit, for workers to send with their retries;
- inline (the command): the same are sent in this process, so the cycle needs no worker. A
  worker that later gets a queued message finds the work done (every send claims its row).

Every step selects what is due, so running the cycle twice for the same `now` does nothing
the second time; a period is closed at most once (closing's locks and unique constraint).
The review period runs from when the summary actually went out (invoices.mark_summary_sent),
so with `now` in the past a draft waits for the real review period.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from django.conf import settings
from django.db.models import QuerySet

from invoicing.backends import get_backend
from invoicing.models import BillingPeriod, Invoice, UsageReport
from invoicing.services import closing
from invoicing.services import invoices as invoice_services
from invoicing.stripe import usage_reports
from metering.currencies import format_minor
from notifications import selectors as notification_selectors
from notifications import services as notification_services
from notifications.models import Notification

logger = logging.getLogger(__name__)


class Step(StrEnum):
    CLOSE = "close"
    USAGE_REPORT = "usage report"
    SUMMARY = "summary"
    FINALIZE = "finalize"
    DELIVERY = "delivery"


class Outcome(StrEnum):
    DONE = "done"
    ALREADY = "already done"  # a period asked for by id that was closed before
    WAITING = "waiting"
    FAILED = "failed"


@dataclass(frozen=True)
class CycleEntry:
    """One thing the cycle did, could not do, or found waiting, and why."""

    step: Step
    outcome: Outcome
    subject: str  # "period acme [2026-11-02 10:00, 2026-11-02 11:00)", "draft #3 of acme"
    detail: str
    period_id: int | None = None
    invoice_id: int | None = None

    def __str__(self) -> str:
        return f"{self.subject}: {self.detail}"


@dataclass
class CycleReport:
    now: datetime
    inline: bool
    entries: list[CycleEntry] = field(default_factory=list)

    def add(
        self,
        step: Step,
        outcome: Outcome,
        subject: str,
        detail: str,
        *,
        period_id: int | None = None,
        invoice_id: int | None = None,
    ) -> None:
        self.entries.append(
            CycleEntry(step, outcome, subject, detail, period_id=period_id, invoice_id=invoice_id)
        )

    def select(
        self, *, step: Step | None = None, outcome: Outcome | None = None
    ) -> list[CycleEntry]:
        return [
            entry
            for entry in self.entries
            if (step is None or entry.step == step)
            and (outcome is None or entry.outcome == outcome)
        ]

    @property
    def done(self) -> list[CycleEntry]:
        return self.select(outcome=Outcome.DONE)

    @property
    def waiting(self) -> list[CycleEntry]:
        return self.select(outcome=Outcome.WAITING)

    @property
    def failed(self) -> list[CycleEntry]:
        return self.select(outcome=Outcome.FAILED)

    def counts(self) -> dict[str, int]:
        """What each step did, and how much waits or failed (the beat task's result)."""

        def done(step: Step) -> int:
            return len(self.select(step=step, outcome=Outcome.DONE))

        return {
            "closed": done(Step.CLOSE),
            "usage_reports": done(Step.USAGE_REPORT),
            "summaries": done(Step.SUMMARY),
            "finalized": done(Step.FINALIZE),
            "delivered": done(Step.DELIVERY),
            "waiting": len(self.waiting),
            "failed": len(self.failed),
        }


def run_billing_cycle(
    *,
    now: datetime,
    inline: bool = False,
    period_ids: Collection[int] | None = None,
    explain: bool = True,
) -> CycleReport:
    """Run the billing cycle as of `now` and report what it did, what failed and what waits.

    period_ids: only these periods and their invoices (the admin's selection); by default
    every due period and every draft. inline: send summaries, usage reports and deliveries
    in this process (see the module docstring). explain: list what waits and why (every
    draft is read; beat, which runs every minute, skips it).
    """
    report = CycleReport(now=now, inline=inline)
    closed = _close(report, now=now, period_ids=period_ids)
    _announce_unpriced(closed, inline=inline)
    _report_usage(report, closed=closed, now=now, inline=inline)
    scope = None if period_ids is None else _invoice_ids(period_ids)
    _send_summaries(report, scope=scope, inline=inline)
    failed = _finalize_and_deliver(report, now=now, scope=scope, inline=inline)
    if explain:
        _explain_waiting(report, now=now, scope=scope, period_ids=period_ids, failed=failed)
    logger.info("billing cycle at %s: %s", now.isoformat(), report.counts())
    return report


# --- 1. Close ---------------------------------------------------------------------------------


def _close(report: CycleReport, *, now: datetime, period_ids: Collection[int] | None) -> list[int]:
    """Close the due periods (or the given ones, if due); returns the ids closed now."""
    closed: list[int] = []
    failed: dict[int, str] = {}
    already: list[int] = []
    not_due: list[int] = []
    if period_ids is None:
        result = closing.close_due_periods(now=now)
        closed, failed = result.closed, result.failed
        order = [*closed, *failed]
    else:
        selected = list(BillingPeriod.objects.filter(pk__in=period_ids).order_by("end", "pk"))
        order = [period.pk for period in selected]
        for period in selected:
            was_closed = period.status == BillingPeriod.Status.CLOSED
            try:
                invoice = closing.close_billing_period(period_id=period.pk, now=now)
            except Exception as exc:  # one period's failure must not stop the others
                logger.exception("closing period %s failed", period.pk)
                failed[period.pk] = f"{type(exc).__name__}: {exc}"
                continue
            if invoice is None:
                not_due.append(period.pk)
            elif was_closed:
                already.append(period.pk)
            else:
                closed.append(period.pk)
    periods = BillingPeriod.objects.select_related("customer").in_bulk(order)
    invoices = {
        invoice.period_id: invoice
        for invoice in Invoice.objects.filter(period_id__in=[*closed, *already])
    }
    for period_id in order:
        period, invoice = periods[period_id], invoices.get(period_id)
        subject = f"period {period}"
        if period_id in failed:
            report.add(Step.CLOSE, Outcome.FAILED, subject, failed[period_id], period_id=period_id)
        elif period_id in not_due:
            report.add(
                Step.CLOSE,
                Outcome.WAITING,
                subject,
                "not due yet (its grace period runs, or an earlier period is open)",
                period_id=period_id,
            )
        elif invoice is not None:
            total = format_minor(invoice.total_minor, invoice.currency)
            if period_id in already:
                detail = f"already closed ({invoice}, total {total})"
                outcome = Outcome.ALREADY
            else:
                detail = f"closed into {invoice} (total {total})"
                outcome = Outcome.DONE
            report.add(
                Step.CLOSE, outcome, subject, detail, period_id=period_id, invoice_id=invoice.pk
            )
    return closed


def _announce_unpriced(closed: list[int], *, inline: bool) -> None:
    """Tell finance of the unpriced usage the closes found (DESIGN 4a); inline: send now."""
    if not closed:
        return
    try:
        queued = notification_services.announce_unpriced_usage(
            invoice_ids=_invoice_ids(closed), send_after_commit=not inline
        )
        if inline:
            for message in queued:
                notification_services.send_notification(notification_id=message.pk)
    except Exception:  # the lines stay listed in the admin and reconcile reports them
        logger.exception("announcing unpriced usage failed")


# --- 2. Usage to Stripe's meters (STRIPE_USAGE_REPORTING) ----------------------------------


def _report_usage(report: CycleReport, *, closed: list[int], now: datetime, inline: bool) -> None:
    if settings.STRIPE_USAGE_REPORTING == "off":
        return
    if not inline:
        if closed:
            usage_reports.after_periods_closed(closed_period_ids=closed)
            report.add(
                Step.USAGE_REPORT,
                Outcome.DONE,
                f"usage of {len(closed)} closed period(s)",
                "queued for reporting to Stripe (a worker sends it)",
            )
        return
    try:
        report_ids = usage_reports.create_close_usage_reports(now=now)
    except Exception as exc:
        logger.exception("writing the usage reports failed")
        report.add(
            Step.USAGE_REPORT, Outcome.FAILED, "usage reports", f"{type(exc).__name__}: {exc}"
        )
        return
    errors: dict[int, str] = {}
    for report_id in report_ids:
        try:
            usage_reports.send_usage_report(report_id=report_id)
        except Exception as exc:  # recorded on the row; a worker or the resume task retries
            logger.exception("sending usage report %s failed", report_id)
            errors[report_id] = f"{type(exc).__name__}: {exc}"
    rows = UsageReport.objects.filter(pk__in=report_ids).select_related("customer", "meter")
    for row in rows.order_by("pk"):
        subject = (
            f"usage of {row.customer.external_id} on {row.meter.code} "
            f"[{row.window_start:%Y-%m-%d %H:%M}, {row.window_end:%Y-%m-%d %H:%M})"
        )
        if row.status == UsageReport.Status.SENT:
            detail = f"reported to Stripe ({row.event_name}: {row.value})"
            report.add(Step.USAGE_REPORT, Outcome.DONE, subject, detail)
        else:
            reason = errors.get(row.pk) or row.last_error or row.get_status_display().lower()
            report.add(
                Step.USAGE_REPORT, Outcome.FAILED, subject, f"not reported to Stripe: {reason}"
            )


# --- 3. Usage summaries ---------------------------------------------------------------------


def _invoice_ids(period_ids: Collection[int]) -> list[int]:
    return list(Invoice.objects.filter(period_id__in=period_ids).values_list("pk", flat=True))


def _drafts(scope: list[int] | None) -> QuerySet[Invoice]:
    drafts = Invoice.objects.filter(status=Invoice.Status.DRAFT)
    return drafts if scope is None else drafts.filter(pk__in=scope)


def _send_summaries(report: CycleReport, *, scope: list[int] | None, inline: bool) -> None:
    """Queue the summary of every draft that has none (inline: and send it now)."""
    untold = list(_drafts(scope).filter(summary_sent_at__isnull=True).values_list("pk", flat=True))
    if not untold:
        return
    known = notification_selectors.latest_usage_summaries(invoice_ids=untold)
    try:
        notification_services.queue_usage_summaries(
            invoice_ids=untold, send_after_commit=not inline
        )
        if inline:
            notification_services.send_usage_summaries_now(invoice_ids=untold)
    except Exception as exc:
        logger.exception("queueing usage summaries failed")
        report.add(Step.SUMMARY, Outcome.FAILED, "usage summaries", f"{type(exc).__name__}: {exc}")
    latest = notification_selectors.latest_usage_summaries(invoice_ids=untold)
    for invoice in Invoice.objects.filter(pk__in=untold).select_related("customer").order_by("pk"):
        message = latest.get(invoice.pk)
        subject = f"{invoice} of {invoice.customer.external_id}"
        if message is None:
            continue  # explained as waiting
        if invoice.summary_sent_at is not None:
            if message.status == Notification.Status.SKIPPED:
                detail = "no billing e-mail address: usage summary skipped (counts as sent)"
            else:
                detail = f"usage summary sent to {', '.join(message.recipients)}"
            report.add(Step.SUMMARY, Outcome.DONE, subject, detail, invoice_id=invoice.pk)
        elif inline and message.status == Notification.Status.PENDING and message.last_error:
            report.add(
                Step.SUMMARY,
                Outcome.FAILED,
                subject,
                f"usage summary not sent: {message.last_error} (the next run tries again)",
                invoice_id=invoice.pk,
            )
        elif invoice.pk not in known:
            report.add(
                Step.SUMMARY,
                Outcome.DONE,
                subject,
                "usage summary queued (a worker sends it)",
                invoice_id=invoice.pk,
            )


# --- 4. Finalize and hand to the backend ------------------------------------------------------


def _finalize_and_deliver(
    report: CycleReport, *, now: datetime, scope: list[int] | None, inline: bool
) -> set[int]:
    """Finalize the reviewed drafts and deliver them (inline) or describe where their queued
    delivery stands; returns the ids that failed to finalize."""
    result = invoice_services.finalize_due_invoices(now=now, invoice_ids=scope)
    invoices = Invoice.objects.select_related("customer").in_bulk(
        [*result.finalized, *result.failed]
    )
    for invoice_id, error in result.failed.items():
        invoice = invoices[invoice_id]
        subject = f"{invoice} of {invoice.customer.external_id}"
        report.add(Step.FINALIZE, Outcome.FAILED, subject, error, invoice_id=invoice_id)
    backend = get_backend()
    if inline and result.finalized:
        # The invoice e-mails (local backend) were queued by the finalization; send them here.
        notification_services.send_invoice_emails_now(invoice_ids=result.finalized)
    for invoice_id in result.finalized:
        invoice = invoices[invoice_id]
        total = format_minor(invoice.total_minor, invoice.currency)
        subject = f"draft #{invoice.pk} of {invoice.customer.external_id}"
        report.add(
            Step.FINALIZE,
            Outcome.DONE,
            subject,
            f"finalized as {invoice.number} (total {total})",
            invoice_id=invoice_id,
        )
        subject = f"{invoice.number} of {invoice.customer.external_id}"
        if inline:
            try:
                delivery = invoice_services.deliver_to_backend(invoice_id=invoice_id)
            except Exception as exc:  # transient: the queued deliver task retries it
                logger.exception("delivering invoice %s failed", invoice_id)
                detail = (
                    f"delivery to the {backend.name} backend failed: {type(exc).__name__}: "
                    f"{exc} (a worker retries it)"
                )
                report.add(Step.DELIVERY, Outcome.FAILED, subject, detail, invoice_id=invoice_id)
                continue
        else:
            delivery = backend.describe_delivery(invoice)
        if delivery is None:
            continue
        if delivery.delivered:
            report.add(Step.DELIVERY, Outcome.DONE, subject, delivery.detail, invoice_id=invoice_id)
        elif inline:
            report.add(
                Step.DELIVERY, Outcome.FAILED, subject, delivery.detail, invoice_id=invoice_id
            )
        else:
            detail = f"queued for delivery to the {backend.name} backend (a worker delivers it)"
            report.add(Step.DELIVERY, Outcome.DONE, subject, detail, invoice_id=invoice_id)
    return set(result.failed)


# --- What waits, and why ------------------------------------------------------------------


def _explain_waiting(
    report: CycleReport,
    *,
    now: datetime,
    scope: list[int] | None,
    period_ids: Collection[int] | None,
    failed: set[int],
) -> None:
    if period_ids is None:
        _explain_open_periods(report, now=now)
    drafts = list(_drafts(scope).select_related("customer").order_by("pk"))
    untold = [invoice.pk for invoice in drafts if invoice.summary_sent_at is None]
    summaries = notification_selectors.latest_usage_summaries(invoice_ids=untold)
    for invoice in drafts:
        if invoice.pk in failed:
            continue  # reported as failed
        subject = f"{invoice} of {invoice.customer.external_id}"
        if invoice.summary_sent_at is None:
            detail = "waits for its usage summary: " + _summary_state(
                summaries.get(invoice.pk), inline=report.inline
            )
        elif invoice.finalize_after > now:
            detail = f"waits for its review period until {invoice.finalize_after.isoformat()}"
        else:
            continue
        report.add(Step.FINALIZE, Outcome.WAITING, subject, detail, invoice_id=invoice.pk)


def _summary_state(message: Notification | None, *, inline: bool) -> str:
    if message is None:
        return "not queued yet"
    if message.status == Notification.Status.PENDING:
        state = f"queued at {message.created_at.isoformat()}, not sent yet"
        if message.last_error:
            state += f" (last attempt: {message.last_error})"
        return state if inline else state + " (a worker sends it, or run manage.py close_periods)"
    if message.status == Notification.Status.SENDING:
        return (
            f"being sent since {message.updated_at.isoformat()} and not confirmed; if its "
            "sender crashed, resend it from the admin's Notifications"
        )
    return f"summary {message.get_status_display().lower()}"


def _explain_open_periods(report: CycleReport, *, now: datetime) -> None:
    """Periods that have ended but are not closed: in their grace period, or held back."""
    grace = timedelta(seconds=settings.BILLING_GRACE_PERIOD)
    failed = {
        entry.period_id
        for entry in report.select(step=Step.CLOSE, outcome=Outcome.FAILED)
        if entry.period_id is not None
    }
    held = [pk for pk in closing.due_period_ids(now=now) if pk not in failed]
    ended = (
        BillingPeriod.objects.filter(end__lte=now)
        .exclude(status=BillingPeriod.Status.CLOSED)
        .exclude(pk__in=failed)
        .select_related("customer")
        .order_by("end", "pk")
    )
    held_set = set(held)
    for period in ended:
        if period.pk in held_set:
            detail = (
                "due, not closed in this run: an earlier period of the customer is not closed, "
                "or another worker is closing it"
            )
        else:
            detail = (
                f"ended {period.end.isoformat()}; closes after its grace period for late "
                f"events, at {(period.end + grace).isoformat()}"
            )
        report.add(Step.CLOSE, Outcome.WAITING, f"period {period}", detail, period_id=period.pk)
