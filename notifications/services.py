"""Telling people: usage summaries before charging, finance notices, and the operator's
agent-platform webhook. Every message is an outbox row first (unique key), then sent by a task
after commit, so a retry or a second worker never sends it twice. Budget alerts are queued
here by budgets.messages."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from invoicing.documents import document_filename, invoice_document_context, render_invoice_pdf
from invoicing.models import Invoice, InvoiceLine
from invoicing.pricing import describe_line_price
from invoicing.services import invoices as invoice_services
from metering.currencies import format_minor
from metering.localtime import customer_span, customer_time
from metering.models import Customer
from metering.serializers import decimal_text
from notifications.models import Notification, OperatorWebhook

logger = logging.getLogger(__name__)
N = Notification


# --- The outbox ----------------------------------------------------------------------------


def queue_notification(
    *,
    key: str,
    kind: str,
    recipients: list[str],
    subject: str,
    context: dict[str, Any],
    customer: Customer | None = None,
    invoice_id: int | None = None,
    period_start: datetime | None = None,
    send_after_commit: bool = True,
) -> Notification:
    """Record a message once (by key) and queue its send after the transaction commits; with
    send_after_commit=False the caller sends it (send_notification) and no worker is needed."""
    notification, created = Notification.objects.get_or_create(
        key=key,
        defaults={
            "kind": kind,
            "customer": customer,
            "recipients": sorted(set(recipients)),
            "subject": subject,
            "context": json.loads(json.dumps(context, default=str)),
            "invoice_id": invoice_id,
            "period_start": period_start,
        },
    )
    if created and send_after_commit:
        from notifications.tasks import send_notification

        send_notification.delay_on_commit(notification.pk)
    return notification


def _claim(notification_id: int) -> Notification | None:
    """Take a pending message for sending; None if someone else has or it is done."""
    claimed = Notification.objects.filter(pk=notification_id, status=N.Status.PENDING).update(
        status=N.Status.SENDING, updated_at=timezone.now()
    )
    return Notification.objects.get(pk=notification_id) if claimed else None


def send_notification(*, notification_id: int) -> Notification:
    """Render and send a pending message (HTML and plain text); never twice.

    The row is claimed (pending -> sending) in its own statement before the provider is
    called, outside any transaction; a worker that crashes mid-send leaves it `sending`, and
    finance staff resend it from the admin rather than it being sent twice automatically.
    """
    notification = _claim(notification_id)
    if notification is None:
        return Notification.objects.get(pk=notification_id)
    if not notification.recipients:
        Notification.objects.filter(pk=notification.pk).update(status=N.Status.SKIPPED)
        _after_sent(notification, at=timezone.now())
        notification.refresh_from_db()
        return notification
    template = f"emails/{notification.kind}"
    context = {**notification.context, "subject": notification.subject}
    message = EmailMultiAlternatives(
        subject=notification.subject,
        body=render_to_string(f"{template}.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=notification.recipients,
    )
    message.attach_alternative(render_to_string(f"{template}.html", context), "text/html")
    if notification.kind == N.Kind.INVOICE and notification.invoice_id:
        invoice = Invoice.objects.select_related("customer", "period").get(
            pk=notification.invoice_id
        )
        message.attach(
            document_filename(invoice, "pdf"), render_invoice_pdf(invoice), "application/pdf"
        )
    message.extra_headers["X-Billing-Notification"] = notification.key
    try:
        message.send()
    except Exception as exc:  # the provider refused: record it, let the task retry
        Notification.objects.filter(pk=notification.pk).update(
            status=N.Status.PENDING,
            attempts=notification.attempts + 1,
            last_error=f"{type(exc).__name__}: {exc}"[:2000],
        )
        raise
    status = getattr(message, "anymail_status", None)
    message_id = (getattr(status, "message_id", None) or "") if status else ""
    now = timezone.now()
    Notification.objects.filter(pk=notification.pk).update(
        status=N.Status.SENT,
        attempts=notification.attempts + 1,
        provider_message_id=str(message_id)[:200],
        sent_at=now,
        last_error="",
    )
    _after_sent(notification, at=now)
    notification.refresh_from_db()
    return notification


def _after_sent(notification: Notification, *, at: datetime) -> None:
    if notification.kind == N.Kind.USAGE_SUMMARY and notification.invoice_id:
        invoice_services.mark_summary_sent(invoice_id=notification.invoice_id, at=at)


def resend_notification(*, notification: Notification, user: object = None) -> Notification:
    """Finance staff: send a message again as a new outbox row (the old one stays)."""
    count = Notification.objects.filter(key__startswith=f"{notification.key}:resend:").count()
    return queue_notification(
        key=f"{notification.key}:resend:{count + 1}",
        kind=notification.kind,
        recipients=list(notification.recipients),
        subject=notification.subject,
        context=notification.context,
        customer=notification.customer,
        invoice_id=notification.invoice_id,
        period_start=notification.period_start,
    )


# --- Usage summaries -----------------------------------------------------------------------


def summary_context(invoice: Invoice) -> dict[str, Any]:
    """What the summary shows: each line as the invoice has it, totals, when it is charged."""
    currency = invoice.currency
    lines = []
    for line in invoice.lines.select_related("meter", "source_period").order_by("position"):
        lines.append(
            {
                "kind": line.kind,
                "meter": line.meter.code if line.meter else "",
                "description": line.description,
                "quantity": decimal_text(line.quantity),
                "unit": line.meter.unit if line.meter else "",
                "pricing": describe_line_price(line, currency=currency),
                "amount": format_minor(line.amount_minor, currency),
                "amount_minor": line.amount_minor,
            }
        )
    base = settings.PORTAL_BASE_URL.rstrip("/")
    # the review period runs from the summary (see invoices.mark_summary_sent)
    charge_after = max(
        invoice.finalize_after,
        timezone.now() + timedelta(seconds=settings.BILLING_REVIEW_PERIOD),
    )
    return {
        "customer_name": invoice.customer.name,
        "customer_id": invoice.customer.external_id,
        "period_start": invoice.period.start.isoformat(),
        "period_end": invoice.period.end.isoformat(),
        "timezone": invoice.customer.timezone,
        # Worded in the customer's zone, named, as the portal shows them (metering.localtime).
        "period_local": customer_span(invoice.period.start, invoice.period.end, invoice.customer),
        "currency": currency,
        "lines": lines,
        "total": format_minor(invoice.total_minor, currency),
        "total_minor": invoice.total_minor,
        "charge_after": charge_after.isoformat(),
        "charge_after_local": customer_time(charge_after, invoice.customer),
        "portal_url": f"{base}/portal/invoices/{invoice.pk}/",
    }


# --- The invoice -----------------------------------------------------------------------------


def invoice_email_context(invoice: Invoice) -> dict[str, Any]:
    customer = invoice.customer
    document = invoice_document_context(invoice)
    base = settings.PORTAL_BASE_URL.rstrip("/")
    return {
        "customer_name": customer.name,
        "number": invoice.number,
        "period_local": document["period"].local,
        "issued": document["issued"],
        "due": document["due"],
        "total": document["total"],
        "seller_name": document["seller"].name,
        "portal_url": f"{base}/portal/invoices/{invoice.pk}/",
    }


def queue_invoice_email(invoice: Invoice) -> Notification | None:
    """The finalized invoice to the billing contacts, its PDF attached when sent: with the
    local backend (Stripe sends its own invoice e-mails). Called in the finalizing
    transaction (invoicing.hooks), so the outbox row commits with the invoice number."""
    if settings.BILLING_BACKEND != "local":
        return None
    return queue_notification(
        key=f"invoice:{invoice.pk}",
        kind=N.Kind.INVOICE,
        recipients=list(invoice.customer.emails),
        subject=f"Invoice {invoice.number} from {settings.BILLING_SELLER_NAME}: "
        f"{format_minor(invoice.total_minor, invoice.currency)}",
        context=invoice_email_context(invoice),
        customer=invoice.customer,
        invoice_id=invoice.pk,
        period_start=invoice.period.start,
    )


def send_invoice_emails_now(*, invoice_ids: Collection[int]) -> list[Notification]:
    """Send, in this process, the pending invoice e-mails of these invoices (the billing cycle
    run by `manage.py close_periods`, which needs no worker); claimed like every send."""
    pending = list(
        Notification.objects.filter(
            kind=N.Kind.INVOICE, status=N.Status.PENDING, invoice_id__in=invoice_ids
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    for notification_id in pending:
        try:
            send_notification(notification_id=notification_id)
        except Exception:
            logger.exception("sending invoice e-mail %s failed", notification_id)
    return list(Notification.objects.filter(pk__in=pending).order_by("pk"))


def requeue_stale_messages(*, now: datetime) -> int:
    """Queue again the send of every message still pending a while after it was recorded.

    The send task is queued after the outbox row commits; if that message is lost (a broker
    restarted without persistence, or unreachable at that moment) nothing else would send it,
    and an unsent summary would hold its invoice back for ever. Sending claims the row
    atomically, so a message queued twice is still sent once. Operator webhooks never tried
    are queued again the same way (their retries are scheduled by the task itself).
    """
    cutoff = now - timedelta(seconds=settings.BILLING_NOTIFICATION_RETRY_AFTER)
    from notifications.tasks import deliver_operator_webhook, send_notification

    stale = list(
        Notification.objects.filter(status=N.Status.PENDING, updated_at__lt=cutoff)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    for notification_id in stale:
        send_notification.delay(notification_id)
    hooks = list(
        OperatorWebhook.objects.filter(
            status=OperatorWebhook.Status.PENDING, attempts=0, created_at__lt=cutoff
        ).values_list("pk", flat=True)
    )
    for webhook_id in hooks:
        deliver_operator_webhook.delay(webhook_id)
    return len(stale) + len(hooks)


def queue_usage_summaries(
    *, invoice_ids: Collection[int] | None = None, send_after_commit: bool = True
) -> int:
    """Queue the summary of every draft invoice (of `invoice_ids`, if given) that has none yet:
    the billing cycle's step 2, and every minute in beat in case one was missed. With
    send_after_commit=False the rows are only recorded, for send_usage_summaries_now."""
    count = 0
    drafts = Invoice.objects.filter(
        status=Invoice.Status.DRAFT, summary_sent_at__isnull=True
    ).select_related("customer", "period")
    if invoice_ids is not None:
        drafts = drafts.filter(pk__in=invoice_ids)
    for invoice in drafts.order_by("pk"):
        with transaction.atomic():
            queue_notification(
                key=f"usage-summary:{invoice.pk}",
                kind=N.Kind.USAGE_SUMMARY,
                recipients=list(invoice.customer.emails),
                subject=f"Your usage for {customer_time(invoice.period.start, invoice.customer)}: "
                f"{format_minor(invoice.total_minor, invoice.currency)}",
                context=summary_context(invoice),
                customer=invoice.customer,
                invoice_id=invoice.pk,
                period_start=invoice.period.start,
                send_after_commit=send_after_commit,
            )
        count += 1
    return count


def send_usage_summaries_now(*, invoice_ids: Collection[int]) -> list[Notification]:
    """Send, in this process, the pending usage summaries of these drafts (the billing cycle
    run by `manage.py close_periods`, which needs no worker); returns them as they end up.

    Sending claims each row first, so a worker that got the same message sends nothing twice.
    A refused send leaves its row pending with the error (the next run, or the beat's
    requeue, tries again) and stops no other.
    """
    pending = list(
        Notification.objects.filter(
            kind=N.Kind.USAGE_SUMMARY, status=N.Status.PENDING, invoice_id__in=invoice_ids
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    for notification_id in pending:
        try:
            send_notification(notification_id=notification_id)
        except Exception:
            logger.exception("sending usage summary %s failed", notification_id)
    return list(Notification.objects.filter(pk__in=pending).order_by("pk"))


# --- Unpriced usage (DESIGN 4a) -------------------------------------------------------------


def announce_unpriced_usage(
    *, invoice_ids: Collection[int], send_after_commit: bool = True
) -> list[Notification]:
    """Tell finance (BILLING_OPS_EMAILS) of the unpriced usage on these invoices: one message
    per (meter, dimension values, period), whatever the number of closes or reruns (the
    outbox key), with the line to bill or waive in the admin."""
    lines = (
        InvoiceLine.objects.filter(
            invoice_id__in=list(invoice_ids), kind=InvoiceLine.Kind.UNPRICED, quantity__gt=0
        )
        .select_related("meter", "aggregate", "invoice__customer", "invoice__period")
        .order_by("pk")
    )
    queued: list[Notification] = []
    for line in lines:
        period_id = line.source_period_id or line.invoice.period_id
        group = line.aggregate.dimension_key if line.aggregate else str(line.pk)
        customer = line.invoice.customer
        queued.append(
            queue_notification(
                key=f"ops-unpriced:{line.meter_id}:{group}:{period_id}",
                kind=N.Kind.OPS_UNPRICED,
                recipients=list(settings.BILLING_OPS_EMAILS),
                subject=f"Unpriced usage of {customer.external_id}: {line.description}"[:300],
                context={
                    "customer_id": customer.external_id,
                    "customer_name": customer.name,
                    "description": line.description,
                    "dimensions": (line.pricing or {}).get("dimensions") or {},
                    "quantity": decimal_text(line.quantity),
                    "unit": line.meter.unit if line.meter else "",
                    "invoice_id": line.invoice_id,
                    "line_id": line.pk,
                    "period_start": line.invoice.period.start,
                },
                customer=customer,
                invoice_id=line.invoice_id,
                period_start=line.invoice.period.start,
                send_after_commit=send_after_commit,
            )
        )
    return queued


# --- Tracking (anymail) --------------------------------------------------------------------

_BOUNCED = {"bounced", "rejected", "failed", "complained"}


_MAX_RECIPIENT = 254  # characters of an e-mail address (RFC 5321)
# The columns' lengths (both set on the model, so never the fallback 0).
_MESSAGE_ID_LENGTH = Notification._meta.get_field("provider_message_id").max_length or 0
_KEY_LENGTH = Notification._meta.get_field("key").max_length or 0


def _bounce_key(notification_pk: int, recipient: str) -> str:
    key = f"ops-bounce:{notification_pk}:{recipient}"
    if len(key) <= _KEY_LENGTH:
        return key
    return f"ops-bounce:{notification_pk}:sha256:{hashlib.sha256(recipient.encode()).hexdigest()}"


def record_tracking_event(*, message_id: str, event_type: str, recipient: str) -> None:
    """Apply a provider's delivery/bounce event to the message; tell finance of a bounce.

    The fields come from the provider's webhook as it sent them: a message id that no stored id
    can equal (too long, or with a NUL, which PostgreSQL cannot compare) is an unknown message,
    and the recipient is kept to an address's length, without NULs."""
    if not message_id or len(message_id) > _MESSAGE_ID_LENGTH or "\x00" in message_id:
        logger.info("tracking event %s for an unknown message", event_type[:32])
        return
    event_type = event_type.replace("\x00", "")[:32]
    recipient = recipient.replace("\x00", "")[:_MAX_RECIPIENT]
    notification = Notification.objects.filter(provider_message_id=message_id).first()
    if notification is None:
        logger.info("tracking event %s for unknown message %s", event_type, message_id)
        return
    if event_type == "delivered" and notification.status == N.Status.SENT:
        Notification.objects.filter(pk=notification.pk).update(status=N.Status.DELIVERED)
    elif event_type in _BOUNCED:
        Notification.objects.filter(pk=notification.pk).update(
            status=N.Status.BOUNCED, last_error=f"{event_type}: {recipient}"
        )
        if notification.kind != N.Kind.OPS_BOUNCE:
            queue_notification(
                key=_bounce_key(notification.pk, recipient),
                kind=N.Kind.OPS_BOUNCE,
                recipients=list(settings.BILLING_OPS_EMAILS),
                subject=f"Billing e-mail to {recipient} bounced",
                context={
                    "recipient": recipient,
                    "event_type": event_type,
                    "notification_key": notification.key,
                    "customer_id": notification.customer.external_id
                    if notification.customer
                    else "",
                },
                customer=notification.customer,
            )


# --- Operator webhook ----------------------------------------------------------------------


def queue_operator_webhook(*, key: str, event: str, customer: Customer, payload: dict) -> None:
    """Record an outbound event for the agent platform (if configured); sent after commit."""
    if not settings.OPERATOR_WEBHOOK_URL:
        return
    hook, created = OperatorWebhook.objects.get_or_create(
        key=key,
        defaults={
            "event": event,
            "customer": customer,
            "payload": json.loads(
                json.dumps({"event": event, "id": key, "data": payload}, default=str)
            ),
        },
    )
    if created:
        from notifications.tasks import deliver_operator_webhook

        deliver_operator_webhook.delay_on_commit(hook.pk)


def sign_payload(body: bytes, *, secret: str, timestamp: int) -> str:
    """`t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`: the receiver recomputes and compares."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


class WebhookNotDelivered(Exception):
    """The operator's endpoint did not answer 2xx; the task retries with backoff."""


def deliver_operator_webhook(*, webhook_id: int) -> OperatorWebhook:
    """POST one event, signed; mark it delivered on 2xx, else raise for a retry."""
    hook = OperatorWebhook.objects.get(pk=webhook_id)
    if hook.status != OperatorWebhook.Status.PENDING:
        return hook
    body = json.dumps(hook.payload, sort_keys=True).encode()
    timestamp = int(time.time())
    request = urllib.request.Request(  # noqa: S310 - the URL is operator configuration
        settings.OPERATOR_WEBHOOK_URL,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-Billing-Event": hook.event,
            "X-Billing-Event-Id": hook.key,
            "X-Billing-Signature": sign_payload(
                body, secret=settings.OPERATOR_WEBHOOK_SECRET, timestamp=timestamp
            ),
        },
    )
    OperatorWebhook.objects.filter(pk=hook.pk).update(attempts=hook.attempts + 1)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            ok = 200 <= response.status < 300
            detail = f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        ok, detail = False, f"HTTP {exc.code}"
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    if not ok:
        OperatorWebhook.objects.filter(pk=hook.pk).update(last_error=detail[:2000])
        raise WebhookNotDelivered(detail)
    OperatorWebhook.objects.filter(pk=hook.pk).update(
        status=OperatorWebhook.Status.DELIVERED, delivered_at=timezone.now(), last_error=""
    )
    hook.refresh_from_db()
    return hook


def give_up_operator_webhook(*, webhook_id: int, error: str) -> None:
    OperatorWebhook.objects.filter(pk=webhook_id, status=OperatorWebhook.Status.PENDING).update(
        status=OperatorWebhook.Status.FAILED, last_error=error[:2000]
    )
