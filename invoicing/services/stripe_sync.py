"""Stripe sync: customers, invoices, usage reports (an outbox) and webhooks, exactly once.

Every Stripe write follows the same three steps, and the Stripe library stays in
invoicing/backends/stripe.py (imported here as `gateway`):

1. In a transaction, record the intent (the sync or report row, attempts + 1) and commit.
2. Outside any transaction, call Stripe with an idempotency key derived from our ids.
3. In a new transaction, record the answer (Stripe ids on our rows, statuses, audit entries).

A crash between 2 and 3 is repaired by the next run: the same key makes Stripe replay its first
answer (keys live at least 24 hours), and lookups find what an earlier run created even later
(the customer's invoices by our invoice id in metadata, the invoice's items by our line id).
Transient errors propagate as TransientStripeError for the Celery task to retry with backoff;
permanent ones are recorded (status `failed`). A row still unresolved 24 hours after its first
attempt is flagged `needs_attention` and is not resent until finance staff retry it.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Count, Exists, Max, Min, OuterRef, Q, Sum
from django.utils import timezone

from invoicing.backends import stripe as gateway
from invoicing.models import (
    Invoice,
    InvoiceLine,
    StripeCustomer,
    StripeInvoiceSync,
    StripeMeterMapping,
    StripeWebhookEvent,
    UsageReport,
)
from invoicing.services import invoices
from invoicing.services.audit import record_audit
from metering import aggregation
from metering.models import Customer, Meter, UsageAggregate, UsageEvent

logger = logging.getLogger(__name__)

# Stripe keeps idempotency keys and meter-event identifiers at least this long: within it a
# retry is always safe; after it, only a person decides to resend.
RESEND_WINDOW = timedelta(hours=24)
# A syncing row untouched this long is assumed abandoned (worker lost) and queued again.
STALE_ATTEMPT = timedelta(minutes=10)
# Meter events may be at most 35 days old (Stripe); keep a margin for sending delays.
METER_EVENT_MAX_AGE = timedelta(days=35) - timedelta(hours=1)
# Realtime discovery looks this far back before the previous run's cutoff.
REALTIME_LOOKBACK = timedelta(hours=1)
ADDITIVE = {Meter.Aggregation.SUM, Meter.Aggregation.COUNT}

S = Invoice.Status
# The status of our invoice that a Stripe invoice status stands for.
STRIPE_TO_OURS = {
    "open": S.FINALIZED,
    "paid": S.PAID,
    "void": S.VOID,
    "uncollectible": S.UNCOLLECTIBLE,
}
OURS_TO_STRIPE = {ours: theirs for theirs, ours in STRIPE_TO_OURS.items()}
# Stripe's invoice statuses only move forward (draft -> open -> uncollectible -> paid | void).
STRIPE_STATUS_RANK = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}
INVOICE_EVENTS = frozenset(
    {
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_failed",
        "invoice.voided",
        "invoice.marked_uncollectible",
    }
)
VOID_REASON = "voided in Stripe"


def _key(suffix: str) -> str:
    return gateway.idempotency_key(suffix)


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def _from_epoch(seconds: int | float) -> datetime:
    return datetime.fromtimestamp(int(seconds), tz=UTC)


def _get_or_create_locked(model: type[models.Model], defaults: dict, **lookup: Any) -> Any:
    """The row for `lookup`, created if missing, locked for the rest of the transaction."""
    try:
        with transaction.atomic():
            model.objects.get_or_create(**lookup, defaults=defaults)
    except IntegrityError:
        pass  # created concurrently: the lock below waits for it
    return model.objects.select_for_update().get(**lookup)


# --- Customers --------------------------------------------------------------------------------


def ensure_stripe_customer(*, customer_id: int, now: datetime) -> str:
    """The customer's Stripe customer id, creating the Stripe customer on first use."""
    link = _customer_intent(customer_id=customer_id, now=now)
    if link.stripe_customer_id:
        return link.stripe_customer_id
    found = None
    if link.requested_at is not None and now - link.requested_at > RESEND_WINDOW:
        # The key may be forgotten by now, and search has long caught up: look before creating.
        found = gateway.find_customer(customer_id=customer_id)
    obj = found or gateway.create_customer(
        params=link.requested_params, key=_key(f"cus-{customer_id}")
    )
    return _record_stripe_customer(customer_id=customer_id, stripe_customer_id=obj["id"])


@transaction.atomic
def _customer_intent(*, customer_id: int, now: datetime) -> StripeCustomer:
    customer = Customer.objects.get(pk=customer_id)
    link = _get_or_create_locked(StripeCustomer, {}, customer=customer)
    if not link.stripe_customer_id and link.requested_at is None:
        params: dict[str, Any] = {
            "name": customer.name,
            "metadata": {"customer_id": str(customer.pk), "external_id": customer.external_id},
        }
        if customer.emails:
            params["email"] = customer.emails[0]
        link.requested_at = now
        link.requested_params = params
        link.save(update_fields=["requested_at", "requested_params", "updated_at"])
    return link


@transaction.atomic
def _record_stripe_customer(*, customer_id: int, stripe_customer_id: str) -> str:
    link = (
        StripeCustomer.objects.select_for_update()
        .select_related("customer")
        .get(customer_id=customer_id)
    )
    if link.stripe_customer_id:  # linked by finance staff (or another run) meanwhile
        if link.stripe_customer_id != stripe_customer_id:
            logger.warning(
                "customer %s: keeping %s, Stripe also created %s",
                customer_id,
                link.stripe_customer_id,
                stripe_customer_id,
            )
        return link.stripe_customer_id
    link.stripe_customer_id = stripe_customer_id
    link.source = StripeCustomer.Source.CREATED
    link.save(update_fields=["stripe_customer_id", "source", "updated_at"])
    record_audit(
        action="customer.stripe_created",
        obj=link.customer,
        customer_external_id=link.customer.external_id,
        data={"stripe_customer_id": stripe_customer_id},
    )
    return stripe_customer_id


@transaction.atomic
def link_stripe_customer(
    *, customer_id: int, stripe_customer_id: str, user: object = None
) -> StripeCustomer:
    """Finance staff link a customer to an existing Stripe customer (or change the link)."""
    stripe_customer_id = stripe_customer_id.strip()
    if not stripe_customer_id.startswith("cus_"):
        raise ValueError("a Stripe customer id starts with cus_")
    customer = Customer.objects.get(pk=customer_id)
    link = _get_or_create_locked(StripeCustomer, {}, customer=customer)
    before = link.stripe_customer_id
    link.stripe_customer_id = stripe_customer_id
    link.source = StripeCustomer.Source.LINKED
    link.save(update_fields=["stripe_customer_id", "source", "updated_at"])
    record_audit(
        action="customer.stripe_linked",
        obj=customer,
        user=user,
        customer_external_id=customer.external_id,
        data={"from": before, "stripe_customer_id": stripe_customer_id},
    )
    return link


# --- Invoices ---------------------------------------------------------------------------------


def deliver_invoice(*, invoice_id: int, now: datetime | None = None) -> str | None:
    """Create, fill, finalize and charge (or send) the Stripe invoice of a finalized invoice.

    Safe to run any number of times; returns the sync's status, or None if there was nothing
    to do. Raises TransientStripeError (a ConnectionError) for the task to retry.
    """
    now = now or timezone.now()
    sync_id = _begin_invoice_sync(invoice_id=invoice_id, now=now)
    if sync_id is None:
        return None
    try:
        _push_invoice(sync_id=sync_id, now=now)
    except gateway.TransientStripeError as exc:
        _note_sync_error(sync_id=sync_id, error=str(exc))
        raise
    except gateway.PermanentStripeError as exc:
        _fail_invoice_sync(sync_id=sync_id, error=exc, now=now)
        return StripeInvoiceSync.Status.FAILED
    return StripeInvoiceSync.Status.DELIVERED


def _stripe_behind(invoice: Invoice, sync: StripeInvoiceSync) -> bool:
    """Whether a delivered invoice was paid, voided or written off here since, and Stripe,
    as last seen, does not say so yet."""
    if invoice.status in (S.DRAFT, S.FINALIZED):
        return False
    return sync.stripe_status != OURS_TO_STRIPE[invoice.status]


@transaction.atomic
def _begin_invoice_sync(*, invoice_id: int, now: datetime) -> int | None:
    invoice = Invoice.objects.select_related("customer").get(pk=invoice_id)
    if invoice.status == S.DRAFT:
        return None
    sync = StripeInvoiceSync.objects.select_for_update().filter(invoice=invoice).first()
    started = invoice.stripe_invoice_id or (sync is not None and sync.attempts)
    if invoice.status != S.FINALIZED and not started:
        return None  # paid, voided or written off here before it ever reached Stripe
    if sync is None:
        sync = _get_or_create_locked(StripeInvoiceSync, {}, invoice=invoice)
    if sync.status == StripeInvoiceSync.Status.DELIVERED and _stripe_behind(invoice, sync):
        # Changed here after delivery: bring Stripe in line (new keys, a new 24-hour window).
        sync.status = StripeInvoiceSync.Status.PENDING
        sync.first_attempt_at = None
        sync.last_error = ""
        record_audit(
            action="invoice.stripe_status_push",
            obj=invoice,
            customer_external_id=invoice.customer.external_id,
            data={"status": invoice.status, "stripe_status": sync.stripe_status},
        )
    if sync.status != StripeInvoiceSync.Status.PENDING:
        return None
    if sync.first_attempt_at is not None and now - sync.first_attempt_at > RESEND_WINDOW:
        sync.status = StripeInvoiceSync.Status.NEEDS_ATTENTION
        sync.last_error = (
            f"still not delivered {RESEND_WINDOW} after the first attempt ({sync.attempts} "
            f"attempts; last error: {sync.last_error or '-'}): not resent automatically. Check "
            "the invoice in Stripe, then retry from the admin."
        )
        sync.save(update_fields=["status", "last_error", "updated_at"])
        record_audit(
            action="invoice.stripe_needs_attention",
            obj=invoice,
            customer_external_id=invoice.customer.external_id,
            data={"attempts": sync.attempts, "stripe_invoice_id": invoice.stripe_invoice_id},
        )
        return None
    sync.attempts += 1
    sync.first_attempt_at = sync.first_attempt_at or now
    sync.last_attempt_at = now
    sync.save(
        update_fields=[
            "status",
            "last_error",
            "attempts",
            "first_attempt_at",
            "last_attempt_at",
            "updated_at",
        ]
    )
    return sync.pk


def _invoice_params(invoice: Invoice, stripe_customer_id: str) -> dict[str, Any]:
    period = invoice.period
    params: dict[str, Any] = {
        "customer": stripe_customer_id,
        "auto_advance": False,  # we finalize it once every item is in
        "collection_method": settings.STRIPE_COLLECTION_METHOD,
        "currency": invoice.currency.lower(),
        "pending_invoice_items_behavior": "exclude",
        "description": (
            f"Invoice {invoice.number}: usage from {period.start:%Y-%m-%d %H:%M} "
            f"to {period.end:%Y-%m-%d %H:%M} UTC"
        ),
        "metadata": {
            "invoice_id": str(invoice.pk),
            "invoice_number": invoice.number,
            "period_id": str(period.pk),
            "period_start": period.start.isoformat(),
            "period_end": period.end.isoformat(),
            "customer_external_id": invoice.customer.external_id,
        },
    }
    if settings.STRIPE_COLLECTION_METHOD == "send_invoice":
        params["days_until_due"] = settings.STRIPE_DAYS_UNTIL_DUE
    return params


def _item_params(
    invoice: Invoice, line: InvoiceLine, stripe_customer_id: str, stripe_invoice_id: str
) -> dict[str, Any]:
    window = line.source_period or invoice.period
    quantity = f"{line.quantity.normalize():f}"
    unit = line.meter.unit if line.meter else ""
    description = line.description
    if line.kind != InvoiceLine.Kind.CAP_CREDIT:
        description = f"{description} ({quantity} {unit})".replace(" )", ")")
    metadata = {
        "invoice_id": str(invoice.pk),
        "line_id": str(line.pk),
        "kind": line.kind,
        "quantity": quantity,
    }
    if line.aggregate_id is not None:
        metadata["aggregate_id"] = str(line.aggregate_id)
    if line.meter is not None:
        metadata["meter"] = line.meter.code
    return {
        "customer": stripe_customer_id,
        "invoice": stripe_invoice_id,
        "currency": invoice.currency.lower(),
        # The amount as rated here (rounded once): Stripe must not re-rate. Cap credits are
        # negative.
        "amount": line.amount_minor,
        "description": description[:500],
        # Stripe's period end is inclusive; ours is half-open.
        "period": {"start": _epoch(window.start), "end": _epoch(window.end) - 1},
        "metadata": metadata,
    }


def _push_invoice(*, sync_id: int, now: datetime) -> None:
    sync = StripeInvoiceSync.objects.select_related("invoice__customer", "invoice__period").get(
        pk=sync_id
    )
    invoice = sync.invoice
    stripe_customer_id = ensure_stripe_customer(customer_id=invoice.customer_id, now=now)

    stripe_invoice_id = invoice.stripe_invoice_id
    if not stripe_invoice_id:
        found = None
        if sync.attempts > 1:  # an earlier attempt may have created it and lost the answer
            found = gateway.find_invoice(
                stripe_customer_id=stripe_customer_id, invoice_id=invoice.pk
            )
        obj = found or gateway.create_invoice(
            params=_invoice_params(invoice, stripe_customer_id), key=_key(f"inv-{invoice.pk}")
        )
        stripe_invoice_id = _record_stripe_invoice(
            invoice_id=invoice.pk,
            stripe_invoice_id=obj["id"],
            stripe_customer_id=stripe_customer_id,
        )

    lines = list(invoice.lines.select_related("meter", "source_period").order_by("position", "pk"))
    ours = {str(line.pk) for line in lines}
    existing: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in gateway.list_invoice_items(stripe_invoice_id=stripe_invoice_id):
        existing[(item.get("metadata") or {}).get("line_id", "")].append(item)
    strangers = [i["id"] for key, items in existing.items() if key not in ours for i in items]
    doubles = [key for key, items in existing.items() if key in ours and len(items) > 1]
    if strangers or doubles:
        raise gateway.PermanentStripeError(
            f"Stripe invoice {stripe_invoice_id} holds items that are not ours one to one "
            f"(unknown: {strangers}, lines with several items: {doubles}): not finalized",
            code="items_mismatch",
        )
    for line in lines:
        found_items = existing.get(str(line.pk))
        item = (
            found_items[0]
            if found_items
            else gateway.create_invoice_item(
                params=_item_params(invoice, line, stripe_customer_id, stripe_invoice_id),
                key=_key(f"inv-{invoice.pk}-item-{line.pk}"),
            )
        )
        if line.stripe_invoice_item_id != item["id"]:
            _record_line_item(line_id=line.pk, stripe_invoice_item_id=item["id"])

    stripe_invoice = gateway.retrieve_invoice(stripe_invoice_id)
    # Ours as it is now: finance staff may have voided it, or marked it paid, meanwhile.
    status = Invoice.objects.values_list("status", flat=True).get(pk=invoice.pk)
    if stripe_invoice["status"] == "draft":
        if stripe_invoice["total"] != invoice.total_minor:
            raise gateway.PermanentStripeError(
                f"Stripe draft {stripe_invoice_id} totals {stripe_invoice['total']}, ours "
                f"{invoice.total_minor}: not finalized",
                code="total_mismatch",
            )
        if status == S.FINALIZED:
            stripe_invoice = gateway.finalize_invoice(
                stripe_invoice_id, key=_key(f"inv-{invoice.pk}-finalize")
            )
        else:  # finalized quietly (no collection), to be voided or settled just below
            stripe_invoice = gateway.finalize_invoice(
                stripe_invoice_id, key=_key(f"inv-{invoice.pk}-finalize-quiet"), auto_advance=False
            )
    payment_error = ""
    if status != S.FINALIZED:
        stripe_invoice = _settle_in_stripe(invoice, status, stripe_invoice)
    # Charge or send only what is still due here too (ours may be paid or void by now).
    collected = sync.collected_at is not None or status != S.FINALIZED
    if stripe_invoice["status"] == "open" and not collected:
        if settings.STRIPE_COLLECTION_METHOD == "charge_automatically":
            try:
                stripe_invoice = gateway.pay_invoice(
                    stripe_invoice_id, key=_key(f"inv-{invoice.pk}-pay")
                )
            except gateway.CardDeclined as exc:  # Stripe keeps the invoice open and retries
                payment_error = str(exc)
        else:
            stripe_invoice = gateway.send_invoice(
                stripe_invoice_id, key=_key(f"inv-{invoice.pk}-send")
            )
        collected = True
    _record_delivered(
        sync_id=sync.pk,
        stripe_invoice=stripe_invoice,
        stripe_customer_id=stripe_customer_id,
        payment_error=payment_error,
        collected=collected or stripe_invoice["status"] != "open",
        now=now,
    )


def _settle_in_stripe(invoice: Invoice, status: str, stripe_invoice: dict[str, Any]) -> dict:
    """Give the Stripe invoice the status ours has (paid, void or uncollectible here)."""
    target, current = OURS_TO_STRIPE[status], stripe_invoice["status"]
    if current == target:
        return stripe_invoice
    if current not in ("open", "uncollectible"):  # paid or void in Stripe: nothing undoes that
        advice = (
            "refund it in Stripe (or issue a credit note), then resolve ours"
            if current == "paid"
            else "resolve it by hand"
        )
        raise gateway.PermanentStripeError(
            f"ours is {status}, but Stripe invoice {stripe_invoice['id']} is {current}: {advice}",
            code="status_conflict",
        )
    stripe_id = stripe_invoice["id"]
    if target == "void":
        return gateway.void_invoice(stripe_id, key=_key(f"inv-{invoice.pk}-void"))
    if target == "paid":
        return gateway.pay_invoice(
            stripe_id, key=_key(f"inv-{invoice.pk}-paid-out-of-band"), out_of_band=True
        )
    # target "uncollectible", and Stripe's is open (uncollectible would equal the target)
    return gateway.mark_uncollectible(stripe_id, key=_key(f"inv-{invoice.pk}-uncollectible"))


@transaction.atomic
def _record_stripe_invoice(
    *, invoice_id: int, stripe_invoice_id: str, stripe_customer_id: str
) -> str:
    invoice = Invoice.objects.select_for_update().select_related("customer").get(pk=invoice_id)
    if invoice.stripe_invoice_id:
        return invoice.stripe_invoice_id
    invoice.stripe_invoice_id = stripe_invoice_id
    invoice.save(update_fields=["stripe_invoice_id", "updated_at"])
    record_audit(
        action="invoice.stripe_created",
        obj=invoice,
        customer_external_id=invoice.customer.external_id,
        data={
            "number": invoice.number,
            "stripe_invoice_id": stripe_invoice_id,
            "stripe_customer_id": stripe_customer_id,
        },
    )
    return stripe_invoice_id


@transaction.atomic
def _record_line_item(*, line_id: int, stripe_invoice_item_id: str) -> None:
    InvoiceLine.objects.filter(pk=line_id).update(stripe_invoice_item_id=stripe_invoice_item_id)


@transaction.atomic
def _record_delivered(
    *,
    sync_id: int,
    stripe_invoice: dict[str, Any],
    stripe_customer_id: str,
    payment_error: str,
    collected: bool,
    now: datetime,
) -> None:
    sync = StripeInvoiceSync.objects.select_for_update().get(pk=sync_id)
    invoice = Invoice.objects.select_related("customer").get(pk=sync.invoice_id)
    if sync.status == StripeInvoiceSync.Status.DELIVERED:
        return
    hosted_url = stripe_invoice.get("hosted_invoice_url") or ""
    if hosted_url.startswith("https://") and invoice.stripe_hosted_invoice_url != hosted_url:
        invoice.stripe_hosted_invoice_url = hosted_url
        invoice.save(update_fields=["stripe_hosted_invoice_url", "updated_at"])
    sync.status = StripeInvoiceSync.Status.DELIVERED
    sync.delivered_at = now
    sync.collected_at = sync.collected_at or (now if collected else None)
    sync.last_error = f"payment failed: {payment_error}" if payment_error else ""
    # Webhooks, which carry Stripe's time, take precedence, unless this answer is further along.
    if sync.stripe_status_at is None or (
        STRIPE_STATUS_RANK.get(stripe_invoice["status"], -1)
        > STRIPE_STATUS_RANK.get(sync.stripe_status, -1)
    ):
        sync.stripe_status = stripe_invoice["status"]
    sync.save()
    record_audit(
        action="invoice.stripe_delivered",
        obj=invoice,
        customer_external_id=invoice.customer.external_id,
        data={
            "number": invoice.number,
            "stripe_invoice_id": stripe_invoice["id"],
            "stripe_customer_id": stripe_customer_id,
            "stripe_status": stripe_invoice["status"],
            "collection_method": settings.STRIPE_COLLECTION_METHOD,
            "stripe_invoice_items": dict(
                invoice.lines.order_by("position").values_list("pk", "stripe_invoice_item_id")
            ),
            "payment_error": payment_error,
            "attempts": sync.attempts,
        },
    )


@transaction.atomic
def _note_sync_error(*, sync_id: int, error: str) -> None:
    StripeInvoiceSync.objects.filter(pk=sync_id).update(last_error=error, updated_at=timezone.now())


@transaction.atomic
def _fail_invoice_sync(*, sync_id: int, error: gateway.StripeSyncError, now: datetime) -> None:
    sync = StripeInvoiceSync.objects.select_for_update().get(pk=sync_id)
    invoice = Invoice.objects.select_related("customer").get(pk=sync.invoice_id)
    sync.status = StripeInvoiceSync.Status.FAILED
    sync.last_error = str(error)
    sync.save(update_fields=["status", "last_error", "updated_at"])
    record_audit(
        action="invoice.stripe_failed",
        obj=invoice,
        customer_external_id=invoice.customer.external_id,
        data={"error": str(error), "code": error.code, "http_status": error.http_status},
    )


@transaction.atomic
def retry_invoice_sync(*, invoice_id: int, user: object = None, now: datetime) -> None:
    """Finance staff resume a failed or flagged delivery (or deliver one never attempted).

    The 24-hour clock restarts: a person checked Stripe and decided. The next run looks up
    what earlier runs created (invoice by metadata, items by line) before creating anything.
    """
    invoice = Invoice.objects.select_related("customer").get(pk=invoice_id)
    if invoice.status == S.DRAFT:
        raise invoices.TransitionNotAllowed(f"invoice {invoice} is a draft: nothing to deliver")
    sync = _get_or_create_locked(StripeInvoiceSync, {}, invoice=invoice)
    if sync.status == StripeInvoiceSync.Status.DELIVERED:
        return
    before = sync.status
    sync.status = StripeInvoiceSync.Status.PENDING
    sync.first_attempt_at = now if sync.first_attempt_at else None
    sync.save(update_fields=["status", "first_attempt_at", "updated_at"])
    record_audit(
        action="invoice.stripe_retried",
        obj=invoice,
        user=user,
        customer_external_id=invoice.customer.external_id,
        data={"from": before, "attempts": sync.attempts, "last_error": sync.last_error},
    )
    from invoicing.tasks import deliver_invoice as deliver_task

    deliver_task.delay_on_commit(invoice.pk)


# --- Usage reports (Billing Meters) -----------------------------------------------------------


def report_identifier(report: UsageReport) -> str:
    """The meter event's identifier (and idempotency key), derived from the report row."""
    return _key(f"usage-{report.pk}")


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
        if mode == "realtime" and mapping.meter.aggregation in ADDITIVE:
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
    summary = events.aggregate(n=Count("pk"), total=Sum("quantity"))
    if meter.aggregation == Meter.Aggregation.COUNT:
        return Decimal(summary["n"]), summary["n"]
    return summary["total"] or Decimal(0), summary["n"]


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
        if mapping.meter.aggregation in ADDITIVE
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
        is_active=True, meter__aggregation__in=ADDITIVE
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
    from invoicing.tasks import stripe_send_usage_report

    def queue(report_id: int) -> None:
        def send() -> None:
            stripe_send_usage_report.delay(report_id)

        transaction.on_commit(send, robust=True)

    for report_id in report_ids:
        queue(report_id)


def send_usage_report(*, report_id: int, now: datetime | None = None) -> str | None:
    """Send one report as a meter event; a duplicate identifier counts as delivered.

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
    try:
        stripe_customer_id = ensure_stripe_customer(customer_id=report.customer_id, now=now)
        result = gateway.create_meter_event(
            event_name=report.event_name,
            stripe_customer_id=stripe_customer_id,
            value=report.value,
            identifier=report_identifier(report),
            timestamp=report.timestamp,
        )
    except gateway.TransientStripeError as exc:
        UsageReport.objects.filter(pk=report.pk).update(last_error=str(exc))
        raise
    except gateway.PermanentStripeError as exc:
        UsageReport.objects.filter(pk=report.pk).update(
            status=UsageReport.Status.FAILED, last_error=str(exc)
        )
        return UsageReport.Status.FAILED
    note = "Stripe already had this identifier: delivered before" if result.duplicate else ""
    _record_report_sent(report_id=report.pk, now=now, note=note)
    return UsageReport.Status.SENT


@transaction.atomic
def _begin_report(*, report_id: int, now: datetime) -> UsageReport | None:
    report = UsageReport.objects.select_for_update().get(pk=report_id)
    if report.status != UsageReport.Status.PENDING:
        return None
    if report.first_attempt_at is not None and now - report.first_attempt_at > RESEND_WINDOW:
        report.status = UsageReport.Status.NEEDS_ATTENTION
        report.last_error = (
            f"still not confirmed {RESEND_WINDOW} after the first attempt (last error: "
            f"{report.last_error or '-'}): Stripe may have forgotten the identifier, so it is "
            "not resent automatically. Check the meter's usage in Stripe, then retry or mark "
            "it delivered from the admin."
        )
        report.save(update_fields=["status", "last_error"])
        return None
    report.attempts += 1
    report.first_attempt_at = report.first_attempt_at or now
    report.last_attempt_at = now
    report.save(update_fields=["attempts", "first_attempt_at", "last_attempt_at"])
    return report


@transaction.atomic
def _record_report_sent(*, report_id: int, now: datetime, note: str = "") -> None:
    UsageReport.objects.filter(pk=report_id).exclude(status=UsageReport.Status.SENT).update(
        status=UsageReport.Status.SENT, sent_at=now, last_error=note
    )


@transaction.atomic
def retry_usage_report(*, report_id: int, user: object = None, now: datetime) -> None:
    """Finance staff resend a failed or flagged report under the same identifier."""
    report = UsageReport.objects.select_for_update().select_related("customer").get(pk=report_id)
    if report.status == UsageReport.Status.SENT:
        return
    before = report.status
    report.status = UsageReport.Status.PENDING
    report.first_attempt_at = now if report.first_attempt_at else None
    report.save(update_fields=["status", "first_attempt_at"])
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


def after_periods_closed(*, closed_period_ids: list[int]) -> None:
    """Hook for the close task: report the new aggregates once the closes have committed."""
    if not closed_period_ids or settings.STRIPE_USAGE_REPORTING == "off":
        return
    from invoicing.tasks import stripe_report_usage

    def report() -> None:
        stripe_report_usage.delay()

    transaction.on_commit(report, robust=True)


def report_usage(*, now: datetime) -> dict[str, int]:
    """Create the due report rows (close and realtime); their sends are queued on commit."""
    return {
        "close": len(create_close_usage_reports(now=now)),
        "realtime": len(create_realtime_usage_reports(now=now)),
    }


def resume_stripe_sync(*, now: datetime) -> dict[str, int]:
    """Queue again what a lost worker or a lost task left pending (beat, every few minutes).

    Deliveries and reports pending with no attempt for STALE_ATTEMPT are queued; finalized
    invoices of the last day that never started a delivery too. Past the resend window, the
    task itself flags them instead of sending.
    """
    from invoicing.tasks import deliver_invoice as deliver_task
    from invoicing.tasks import stripe_send_usage_report

    queued = {"invoices": 0, "usage_reports": 0}
    stale = now - STALE_ATTEMPT
    if settings.BILLING_BACKEND == "stripe":
        pending = StripeInvoiceSync.objects.filter(
            Q(last_attempt_at__lt=stale) | Q(last_attempt_at__isnull=True),
            status=StripeInvoiceSync.Status.PENDING,
        ).values_list("invoice_id", flat=True)
        never = Invoice.objects.filter(
            status=S.FINALIZED,
            finalized_at__gte=now - RESEND_WINDOW,
            finalized_at__lt=stale,
            stripe_sync__isnull=True,
        ).values_list("pk", flat=True)
        for invoice_id in sorted({*pending, *never}):
            deliver_task.delay(invoice_id)
            queued["invoices"] += 1
    if settings.STRIPE_USAGE_REPORTING != "off":
        create_close_usage_reports(now=now)  # closes whose follow-up task was lost
        reports = UsageReport.objects.filter(
            Q(last_attempt_at__lt=stale) | Q(last_attempt_at__isnull=True, created_at__lt=stale),
            status=UsageReport.Status.PENDING,
        ).values_list("pk", flat=True)
        for report_id in reports.order_by("pk"):
            stripe_send_usage_report.delay(report_id)
            queued["usage_reports"] += 1
    return queued


def retry_delay(exc: BaseException, *, retries: int) -> int:
    """Seconds before the next attempt: exponential backoff, at least Stripe's Retry-After."""
    backoff = min(600, 5 * 2 ** min(retries, 10))
    retry_after = getattr(exc, "retry_after", None) or 0
    return max(backoff, int(retry_after))


# --- Webhooks ---------------------------------------------------------------------------------


def receive_webhook(
    *, payload: bytes, signature: str | None, now: datetime | None = None
) -> tuple[StripeWebhookEvent, bool]:
    """Verify a webhook and apply its event once; (event row, True if seen for the first
    time). Raises gateway.InvalidWebhook for a bad or stale signature."""
    event = gateway.verify_webhook(payload=payload, signature=signature)
    return apply_stripe_event(event=event, now=now or timezone.now())


@transaction.atomic
def apply_stripe_event(*, event: dict[str, Any], now: datetime) -> tuple[StripeWebhookEvent, bool]:
    """Store the event by its id (a replay changes nothing) and apply it, in one transaction."""
    obj = (event.get("data") or {}).get("object") or {}
    try:
        with transaction.atomic():
            row = StripeWebhookEvent.objects.create(
                event_id=event["id"],
                type=event.get("type", ""),
                created=_from_epoch(event.get("created") or _epoch(now)),
                livemode=bool(event.get("livemode")),
                stripe_object_id=str(obj.get("id") or ""),
                outcome=StripeWebhookEvent.Outcome.IGNORED,
                payload=event,
            )
    except IntegrityError:
        return StripeWebhookEvent.objects.get(event_id=event["id"]), False
    if row.type in INVOICE_EVENTS and obj.get("object") == "invoice":
        _apply_invoice_event(row=row, obj=obj)
    else:
        row.detail = "event type not handled"
    row.save(update_fields=["outcome", "detail", "invoice"])
    return row, True


def _later_stripe_status(sync: StripeInvoiceSync, stripe_status: str, created: datetime) -> bool:
    """Whether an event's status is newer than the one recorded on the sync.

    A status further along always wins, and one further back never does: events of the same
    second (`created` has whole seconds), and API answers recorded without a time, arrive in
    any order. Between equal ranks, the event's time decides.
    """
    new = STRIPE_STATUS_RANK.get(stripe_status, -1)
    old = STRIPE_STATUS_RANK.get(sync.stripe_status, -1)
    if new != old:
        return new > old
    return sync.stripe_status_at is None or created >= sync.stripe_status_at


def _our_invoice(obj: dict[str, Any]) -> Invoice | None:
    our_id = (obj.get("metadata") or {}).get("invoice_id")
    query = (
        Invoice.objects.filter(pk=int(our_id))
        if our_id and str(our_id).isdigit()
        else Invoice.objects.filter(stripe_invoice_id=obj.get("id"))
    )
    return query.select_for_update().select_related("customer").first()


def _apply_invoice_event(*, row: StripeWebhookEvent, obj: dict[str, Any]) -> None:
    """Move our invoice forward to what the Stripe invoice's status stands for.

    The event's own snapshot of the invoice decides, not the event type, and only a transition
    that invoices.ALLOWED permits from our current status is made: Stripe's statuses only move
    forward, so an event delivered late (invoice.finalized after invoice.paid) finds ours
    already further and changes nothing.
    """
    invoice = _our_invoice(obj)
    if invoice is None:
        row.detail = "not one of our invoices"
        return
    row.invoice = invoice
    if invoice.stripe_invoice_id and invoice.stripe_invoice_id != obj.get("id"):
        row.detail = f"ours is {invoice.stripe_invoice_id} in Stripe, not {obj.get('id')}"
        return
    sync = StripeInvoiceSync.objects.select_for_update().filter(invoice=invoice).first()
    stripe_status = str(obj.get("status") or "")
    if sync is not None and _later_stripe_status(sync, stripe_status, row.created):
        sync.stripe_status = stripe_status
        sync.stripe_status_at = row.created
        sync.save(update_fields=["stripe_status", "stripe_status_at", "updated_at"])
    before = invoice.status
    target = STRIPE_TO_OURS.get(stripe_status)
    if invoice.status == S.DRAFT:
        row.detail = "ours is still a draft: only we finalize"
    elif target is None or target == invoice.status:
        row.outcome = StripeWebhookEvent.Outcome.UNCHANGED
    elif target in invoices.ALLOWED[invoice.status]:
        if target == S.PAID:
            invoices.mark_invoice_paid(invoice_id=invoice.pk, now=row.created)
        elif target == S.VOID:
            invoices.void_invoice(invoice_id=invoice.pk, reason=VOID_REASON, now=row.created)
        elif target == S.UNCOLLECTIBLE:
            invoices.mark_invoice_uncollectible(invoice_id=invoice.pk, now=row.created)
        row.outcome = StripeWebhookEvent.Outcome.APPLIED
    else:
        row.outcome = StripeWebhookEvent.Outcome.STALE
        row.detail = (
            f"Stripe said {stripe_status} at {row.created:%Y-%m-%d %H:%M:%S}; ours is "
            f"{invoice.status} already"
        )
    record_audit(
        action="invoice.stripe_event",
        obj=invoice,
        customer_external_id=invoice.customer.external_id,
        data={
            "event_id": row.event_id,
            "type": row.type,
            "stripe_invoice_id": obj.get("id"),
            "stripe_status": stripe_status,
            "from": before,
            "to": Invoice.objects.values_list("status", flat=True).get(pk=invoice.pk),
            "outcome": row.outcome,
            "attempt_count": obj.get("attempt_count"),
        },
    )


# --- Reconciliation ---------------------------------------------------------------------------


def reconcile_with_stripe() -> list[str]:
    """Differences between our invoices and usage reports and what Stripe holds."""
    try:
        return _reconcile_invoices() + _reconcile_usage()
    except gateway.StripeSyncError as exc:
        return [f"stripe: could not compare with Stripe: {exc}"]


def _reconcile_invoices() -> list[str]:
    problems: list[str] = []
    ours = (
        Invoice.objects.exclude(status=S.DRAFT)
        .filter(Q(stripe_invoice_id__isnull=False) | Q(stripe_sync__isnull=False))
        .select_related("stripe_sync")
        .prefetch_related("lines")
        .order_by("pk")
    )
    if not ours.exists():
        return problems
    theirs = {inv["id"]: inv for inv in gateway.list_invoices()}
    copies: dict[str, list[str]] = defaultdict(list)
    for inv in theirs.values():
        our_id = (inv.get("metadata") or {}).get("invoice_id")
        if our_id:
            copies[our_id].append(inv["id"])
    items_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in gateway.list_invoice_items():
        if item.get("invoice"):
            items_of[item["invoice"]].append(item)

    for invoice in ours:
        label = f"stripe: invoice {invoice.number or invoice.pk}"
        sync = getattr(invoice, "stripe_sync", None)
        if sync is not None and sync.status != StripeInvoiceSync.Status.DELIVERED:
            problems.append(f"{label}: delivery {sync.status} ({sync.last_error or 'no error'})")
        if len(copies.get(str(invoice.pk), [])) > 1:
            problems.append(
                f"{label}: {len(copies[str(invoice.pk)])} Stripe invoices carry its id: "
                f"{', '.join(sorted(copies[str(invoice.pk)]))}"
            )
        if not invoice.stripe_invoice_id:
            continue
        stripe_invoice = theirs.get(invoice.stripe_invoice_id)
        if stripe_invoice is None:
            problems.append(f"{label}: {invoice.stripe_invoice_id} not found in Stripe")
            continue
        if stripe_invoice.get("total") != invoice.total_minor:
            problems.append(
                f"{label}: Stripe total {stripe_invoice.get('total')} != ours {invoice.total_minor}"
            )
        if stripe_invoice.get("currency") != invoice.currency.lower():
            problems.append(
                f"{label}: Stripe currency {stripe_invoice.get('currency')} != ours "
                f"{invoice.currency}"
            )
        if stripe_invoice.get("status") != OURS_TO_STRIPE.get(invoice.status):
            problems.append(
                f"{label}: Stripe status {stripe_invoice.get('status')}, ours {invoice.status}"
            )
        by_line: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for item in items_of.get(invoice.stripe_invoice_id, []):
            by_line[(item.get("metadata") or {}).get("line_id", "")].append(item)
        for line in invoice.lines.all():
            found = by_line.pop(str(line.pk), [])
            if not found:
                problems.append(f"{label}: line {line.pk} has no Stripe invoice item")
            elif len(found) > 1:
                ids = ", ".join(i["id"] for i in found)
                problems.append(f"{label}: line {line.pk} has {len(found)} items: {ids}")
            elif found[0].get("amount") != line.amount_minor:
                problems.append(
                    f"{label}: line {line.pk} amount {line.amount_minor} != Stripe item "
                    f"{found[0]['id']} amount {found[0].get('amount')}"
                )
        for items in by_line.values():
            for item in items:
                problems.append(
                    f"{label}: Stripe item {item['id']} ({item.get('amount')}) is none of our lines"
                )
    return problems


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _reconcile_usage() -> list[str]:
    problems = [
        f"stripe: usage report {r.pk} ({r.event_name}, customer {r.customer_id}, value "
        f"{r.value}) is {r.status}: {r.last_error}"
        for r in UsageReport.objects.filter(
            status__in=[UsageReport.Status.FAILED, UsageReport.Status.NEEDS_ATTENTION]
        ).order_by("pk")
    ]
    sent = (
        UsageReport.objects.filter(status=UsageReport.Status.SENT)
        .values("customer_id", "event_name")
        .annotate(total=Sum("value"), first=Min("timestamp"), last=Max("timestamp"))
        .order_by("customer_id", "event_name")
    )
    if not sent:
        return problems
    meter_ids = gateway.meter_ids_by_event_name()
    links = dict(StripeCustomer.objects.values_list("customer_id", "stripe_customer_id"))
    externals = dict(Customer.objects.values_list("pk", "external_id"))
    for row in sent:
        label = f"stripe: usage of {externals.get(row['customer_id'])} on {row['event_name']}"
        meter_id = meter_ids.get(row["event_name"])
        stripe_customer_id = links.get(row["customer_id"])
        if meter_id is None:
            problems.append(f"{label}: no Stripe meter has this event name")
            continue
        if not stripe_customer_id:
            if row["total"]:
                problems.append(f"{label}: {row['total']} reported, no Stripe customer linked")
            continue
        theirs = gateway.meter_usage(
            stripe_meter_id=meter_id,
            stripe_customer_id=stripe_customer_id,
            start=_minute(row["first"]),
            end=_minute(row["last"]) + timedelta(minutes=1),
        )
        if theirs != Decimal(row["total"]):
            problems.append(f"{label}: reported {row['total']}, Stripe's summaries say {theirs}")
    return problems
