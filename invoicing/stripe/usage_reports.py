"""Usage reports: aggregates and events reported to Stripe Billing Meters, each event's usage
once, as a meter event per report row written before it is sent.

`STRIPE_USAGE_REPORTING=close` reports each aggregate billed at a period close;
`realtime` reports the events of additive meters (sum, count) as they arrive, in batches
behind a watermark over event ids, and leaves the others to the close. A report is an
outbox row (UsageReport, invoicing.stripe.outbox); its meter-event identifier derives from
the row.

What is sent is decided here, from what the row records, never from an answer's text: the
parameters are recorded (`sent_params`) before the first send and every resend sends exactly
them. Stripe keeps an identifier at least 24 hours (its documented contract), so within the
resend window a resend after a lost answer or a saved 500 cannot count twice; a refusal of a
resend (which an earlier attempt may have delivered) is flagged for finance staff, not read as
"delivered". Past the window nothing is resent automatically (outbox.RESEND_WINDOW).

Timestamps: Stripe takes meter events at most 35 days old. A report's timestamp is set so it
stays valid for the whole retry horizon (METER_EVENT_MAX_AGE leaves the resend window and a
margin); a report whose timestamp would be refused by the time it is sent is flagged, with the
reason, instead of being sent to fail.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models import Count, Exists, Max, Min, OuterRef, Q
from django.utils import timezone

from audit.services import record_audit
from invoicing import tasks
from invoicing.models import StripeMeterMapping, UsageReport
from invoicing.stripe import client, outbox
from invoicing.stripe.customers import ensure_stripe_customer
from metering import aggregation, aggregations
from metering.models import Meter, UsageAggregate, UsageEvent

# Stripe takes meter events at most this old.
STRIPE_METER_EVENT_AGE = timedelta(days=35)
# A new report's timestamp is at most this old, so every retry in the resend window (and a
# margin for queueing) still falls within Stripe's 35 days.
METER_EVENT_MAX_AGE = STRIPE_METER_EVENT_AGE - outbox.RESEND_WINDOW - timedelta(hours=1)
# Closer than this to Stripe's limit, a report is flagged instead of sent.
SEND_MARGIN = timedelta(minutes=5)
# Realtime discovery looks this far back before the previous run's cutoff.
REALTIME_LOOKBACK = timedelta(hours=1)


def _unresolved(report: UsageReport) -> str:
    return (
        f"still not confirmed {outbox.RESEND_WINDOW} after the first attempt (last error: "
        f"{report.last_error or '-'}): Stripe may have forgotten the identifier, so it is "
        "not resent automatically. Check the meter's usage in Stripe, then retry or mark "
        "it delivered from the admin."
    )


REPORTS = outbox.Outbox(model=UsageReport, done=UsageReport.Status.SENT, unresolved=_unresolved)


def report_identifier(report: UsageReport) -> str:
    """The meter event's identifier, derived from the report row."""
    return client.identifier(f"usage-{report.pk}")


def after_periods_closed(*, closed_period_ids: list[int]) -> None:
    """Hook for the close task: report the new aggregates once the closes have committed."""
    if not closed_period_ids or settings.STRIPE_USAGE_REPORTING == "off":
        return

    def report() -> None:
        tasks.stripe_report_usage.delay()

    transaction.on_commit(report, robust=True)


def report_usage(*, now: datetime) -> dict[str, int]:
    """Create the due report rows (close and realtime); their sends are queued on commit."""
    return {
        "close": len(create_close_usage_reports(now=now)),
        "realtime": len(create_realtime_usage_reports(now=now)),
    }


def _meter_event_time(moment: datetime, now: datetime) -> datetime:
    """Stripe takes meter events at most 35 days old and not in the future."""
    return max(min(moment, now), now - METER_EVENT_MAX_AGE)


def _last_cumulative(*, customer_id: int, meter_id: int) -> Decimal:
    last = (
        UsageReport.objects.filter(customer_id=customer_id, meter_id=meter_id)
        .order_by("-pk")
        .values_list("cumulative_quantity", flat=True)
        .first()
    )
    return last if last is not None else Decimal(0)


def _new_report(
    *, mapping: StripeMeterMapping, customer_id: int, quantity: Decimal, **fields: Any
) -> UsageReport:
    """A report row carrying `quantity` on from the customer's previous report of the meter.
    Call with the mapping row locked, which serializes the chain."""
    previous = _last_cumulative(customer_id=customer_id, meter_id=mapping.meter_id)
    cumulative = previous + quantity
    return UsageReport.objects.create(
        customer_id=customer_id,
        meter_id=mapping.meter_id,
        event_name=mapping.event_name,
        quantity=quantity,
        cumulative_quantity=cumulative,
        value=math.floor(cumulative) - math.floor(previous),
        **fields,
    )


def create_close_usage_reports(*, now: datetime) -> list[int]:
    """Report rows for the aggregates billed at period closes and not yet reported.

    With STRIPE_USAGE_REPORTING=close, every mapped meter; with realtime, only the meters that
    cannot be reported as increments of events (max, latest, unique_count).
    """
    mode = settings.STRIPE_USAGE_REPORTING
    if mode == "off":
        return []
    created: list[int] = []
    mappings = StripeMeterMapping.objects.filter(is_active=True).select_related("meter")
    for mapping in mappings.order_by("pk"):
        if mode == "realtime" and aggregations.of(mapping.meter).additive:
            continue
        created += _close_reports_for(mapping_id=mapping.pk, now=now)
    return created


def _realtime_watermarks(*, meter_id: int, customer_ids: list[int] | None = None) -> dict:
    """Customer id -> the last event id its realtime reports of the meter cover."""
    reports = UsageReport.objects.filter(meter_id=meter_id, kind=UsageReport.Kind.REALTIME)
    if customer_ids is not None:
        reports = reports.filter(customer_id__in=customer_ids)
    return dict(
        reports.values("customer_id")
        .annotate(w=Max("through_event_pk"))
        .values_list("customer_id", "w")
    )


# A report's aggregate billed the outer event: its window holds the event's timestamp and its
# id range the event's id.
_covers_event = Q(
    aggregate__window_start__lte=OuterRef("timestamp"),
    aggregate__window_end__gt=OuterRef("timestamp"),
    aggregate__event_pk_after__lt=OuterRef("pk"),
    aggregate__event_pk_through__gte=OuterRef("pk"),
)


def _events_quantity(events: models.QuerySet[UsageEvent], meter: Meter) -> tuple[Decimal, int]:
    """The quantity and number of some events of an additive meter (an increment)."""
    usage = aggregations.measure_events(
        events.filter(meter_id=meter.pk), aggregations={meter.pk: aggregations.of(meter)}
    ).get((meter.pk,))
    return (usage.quantity, usage.count) if usage else (Decimal(0), 0)


@transaction.atomic
def _close_reports_for(*, mapping_id: int, now: datetime) -> list[int]:
    mapping = (
        StripeMeterMapping.objects.select_for_update().select_related("meter").get(pk=mapping_id)
    )
    due = UsageAggregate.objects.filter(
        meter_id=mapping.meter_id,
        created_at__gte=mapping.reporting_from,
        stripe_report__isnull=True,
    ).order_by("pk")
    # After a switch from realtime to close reporting, the events that realtime reports
    # already covered are left out (an additive aggregate is the sum of its events).
    marks = (
        _realtime_watermarks(meter_id=mapping.meter_id)
        if aggregations.of(mapping.meter).additive
        else {}
    )
    created = []
    for agg in due:
        quantity, count = agg.quantity, agg.event_count
        if agg.customer_id in marks:
            rest = aggregation.events_of_aggregate(agg).filter(pk__gt=marks[agg.customer_id])
            quantity, count = _events_quantity(rest, mapping.meter)
        report = _new_report(
            mapping=mapping,
            customer_id=agg.customer_id,
            quantity=quantity,
            kind=UsageReport.Kind.CLOSE,
            aggregate=agg,
            event_count=count,
            window_start=agg.window_start,
            window_end=agg.window_end,
            timestamp=_meter_event_time(agg.window_end - timedelta(seconds=1), now),
        )
        created.append(report.pk)
    _queue_sends(created)
    return created


def create_realtime_usage_reports(*, now: datetime) -> list[int]:
    """With STRIPE_USAGE_REPORTING=realtime: one report per customer and additive meter for
    the events received since its previous report (a watermark over event ids)."""
    if settings.STRIPE_USAGE_REPORTING != "realtime":
        return []
    created: list[int] = []
    mappings = StripeMeterMapping.objects.filter(
        is_active=True, meter__aggregation__in=aggregations.ADDITIVE
    ).order_by("pk")
    for mapping_id in mappings.values_list("pk", flat=True):
        created += _realtime_reports_for(mapping_id=mapping_id, now=now)
    return created


@transaction.atomic
def _realtime_reports_for(*, mapping_id: int, now: datetime) -> list[int]:
    mapping = (
        StripeMeterMapping.objects.select_for_update().select_related("meter").get(pk=mapping_id)
    )
    cutoff = now - timedelta(seconds=settings.STRIPE_REALTIME_SETTLE)
    since = mapping.reporting_from
    if mapping.realtime_cutoff is not None:
        since = max(since, mapping.realtime_cutoff - REALTIME_LOOKBACK)
    events = UsageEvent.objects.filter(meter_id=mapping.meter_id)
    candidates = sorted(
        set(
            events.filter(received_at__gte=since, received_at__lte=cutoff).values_list(
                "customer_id", flat=True
            )
        )
    )
    # No event of these customers commits while we read (ingestion takes this lock shared).
    aggregation.lock_customer_usage(candidates, exclusive=True)
    watermarks = _realtime_watermarks(meter_id=mapping.meter_id, customer_ids=candidates)
    created = []
    for customer_id in candidates:
        after = watermarks.get(customer_id) or 0
        newer = events.filter(
            customer_id=customer_id, pk__gt=after, received_at__gte=mapping.reporting_from
        )
        closed = UsageReport.objects.filter(
            kind=UsageReport.Kind.CLOSE, customer_id=customer_id, meter_id=mapping.meter_id
        )
        if closed.exists():
            # Events billed by an aggregate that was reported at a close (before a switch to
            # realtime) are reported already.
            newer = newer.exclude(Exists(closed.filter(_covers_event)))
        # Stop at the first event younger than the cutoff: the watermark never passes an
        # event that is left for later.
        young = newer.filter(received_at__gt=cutoff).aggregate(first=Min("pk"))["first"]
        batch = newer.filter(pk__lt=young) if young is not None else newer
        summary = batch.aggregate(
            n=Count("pk"), through=Max("pk"), first_at=Min("timestamp"), last_at=Max("timestamp")
        )
        if not summary["n"]:
            continue
        quantity, _ = _events_quantity(batch, mapping.meter)
        report = _new_report(
            mapping=mapping,
            customer_id=customer_id,
            quantity=quantity,
            kind=UsageReport.Kind.REALTIME,
            after_event_pk=after,
            through_event_pk=summary["through"],
            event_count=summary["n"],
            window_start=summary["first_at"],
            window_end=summary["last_at"],
            timestamp=_meter_event_time(summary["last_at"], now),
        )
        created.append(report.pk)
    mapping.realtime_cutoff = cutoff
    mapping.save(update_fields=["realtime_cutoff", "updated_at"])
    _queue_sends(created)
    return created


def _queue_sends(report_ids: list[int]) -> None:
    """Queue one send task per report once the rows commit. Robust: a failure to queue one is
    logged and left to the resume task, and never undoes or stops the others."""

    def queue(report_id: int) -> None:
        def send() -> None:
            tasks.stripe_send_usage_report.delay(report_id)

        transaction.on_commit(send, robust=True)

    for report_id in report_ids:
        queue(report_id)


def send_usage_report(*, report_id: int, now: datetime | None = None) -> str | None:
    """Send one report as a meter event.

    Returns the report's status, or None if there was nothing to do. Raises
    TransientStripeError (a ConnectionError) for the task to retry.
    """
    now = now or timezone.now()
    report = _begin_report(report_id=report_id, now=now)
    if report is None:
        return None
    if report.value == 0:
        _record_report_sent(report_id=report.pk, now=now, note="nothing to send: value 0")
        return UsageReport.Status.SENT
    return outbox.attempt(REPORTS, row_id=report.pk, send=lambda: _send(report, now=now))


def _send(report: UsageReport, *, now: datetime) -> None:
    params = report.sent_params
    if not params:
        stripe_customer_id = ensure_stripe_customer(customer_id=report.customer_id, now=now)
        params = client.meter_event_params(
            event_name=report.event_name,
            stripe_customer_id=stripe_customer_id,
            value=report.value,
            identifier=report_identifier(report),
            timestamp=report.timestamp,
        )
        _record_params(report_id=report.pk, params=params)
    key = client.idempotency_key(f"usage-{report.pk}", attempt=report.key_attempt, params=params)
    try:
        client.create_meter_event(params=params, key=key)
    except client.PermanentStripeError as exc:
        if report.attempts > 1:  # an earlier attempt may have delivered it
            _flag(
                report_id=report.pk,
                reason=(
                    f"Stripe refused a resend of identifier {params['identifier']} ({exc}), "
                    "which an earlier attempt (its answer lost) may have delivered: check the "
                    "meter's usage in Stripe, then mark it delivered or retry"
                ),
            )
            return
        raise
    _record_report_sent(report_id=report.pk, now=now)


@transaction.atomic
def _record_params(*, report_id: int, params: dict[str, Any]) -> None:
    UsageReport.objects.filter(pk=report_id, sent_params={}).update(sent_params=params)


@transaction.atomic
def _flag(*, report_id: int, reason: str) -> None:
    UsageReport.objects.filter(pk=report_id).exclude(status=UsageReport.Status.SENT).update(
        status=UsageReport.Status.NEEDS_ATTENTION, last_error=reason
    )


def _too_old(report: UsageReport, now: datetime) -> bool:
    """Whether Stripe would refuse the report's timestamp now (35 days, with a margin)."""
    return report.timestamp < now - STRIPE_METER_EVENT_AGE + SEND_MARGIN


@transaction.atomic
def _begin_report(*, report_id: int, now: datetime) -> UsageReport | None:
    report = UsageReport.objects.select_for_update().get(pk=report_id)
    if report.status == UsageReport.Status.PENDING and report.value and _too_old(report, now):
        report.status = UsageReport.Status.NEEDS_ATTENTION
        report.last_error = (
            f"its timestamp {report.timestamp:%Y-%m-%d %H:%M} UTC is older than Stripe's 35 "
            "days now: not sent (Stripe would refuse it). Report the usage by hand (a meter "
            "event adjustment or a later event), then mark it delivered"
        )
        report.save(update_fields=["status", "last_error"])
        return None
    return report if outbox.begin(REPORTS, report, now=now) else None


@transaction.atomic
def _record_report_sent(*, report_id: int, now: datetime, note: str = "") -> None:
    UsageReport.objects.filter(pk=report_id).exclude(status=UsageReport.Status.SENT).update(
        status=UsageReport.Status.SENT, sent_at=now, last_error=note
    )


@transaction.atomic
def retry_usage_report(*, report_id: int, user: object = None, now: datetime) -> None:
    """Finance staff resend a failed or flagged report under the same identifier."""
    report = UsageReport.objects.select_for_update().select_related("customer").get(pk=report_id)
    before = outbox.reopen(REPORTS, report, now=now)
    if before is None:
        return
    record_audit(
        action="usage_report.retried",
        obj=report,
        user=user,
        customer_external_id=report.customer.external_id,
        data={"from": before, "identifier": report_identifier(report), "value": report.value},
    )
    _queue_sends([report.pk])


@transaction.atomic
def mark_usage_report_delivered(*, report_id: int, user: object = None, now: datetime) -> None:
    """Finance staff confirm (having checked Stripe) that a flagged report did arrive."""
    report = UsageReport.objects.select_for_update().select_related("customer").get(pk=report_id)
    if report.status == UsageReport.Status.SENT:
        return
    before = report.status
    report.status = UsageReport.Status.SENT
    report.sent_at = now
    report.last_error = f"marked delivered by {getattr(user, 'username', 'system')}"
    report.save(update_fields=["status", "sent_at", "last_error"])
    record_audit(
        action="usage_report.marked_delivered",
        obj=report,
        user=user,
        customer_external_id=report.customer.external_id,
        data={"from": before, "identifier": report_identifier(report), "value": report.value},
    )


def resume_usage_reports(*, now: datetime) -> int:
    """Queue again the reports a lost worker or a lost task left (beat, every few minutes):
    the close reports never written, and pending ones untouched for outbox.STALE_ATTEMPT.
    Past the resend window, the task flags them instead of sending. Returns how many sends
    were queued."""
    if settings.STRIPE_USAGE_REPORTING == "off":
        return 0
    create_close_usage_reports(now=now)  # closes whose follow-up task was lost
    report_ids = list(outbox.stale(REPORTS, now=now).values_list("pk", flat=True))
    for report_id in report_ids:
        tasks.stripe_send_usage_report.delay(report_id)
    return len(report_ids)
