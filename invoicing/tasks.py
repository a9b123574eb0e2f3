"""Celery tasks of invoicing: thin wrappers that call services (the billing cycle's beat task
is billing_cycle.tasks).

Services import this module at module level (to queue tasks); the tasks import the services
inside their bodies, so no import cycle runs through here.
"""

from __future__ import annotations

from celery import shared_task
from celery.contrib.django.task import DjangoTask
from django.utils import timezone


@shared_task(
    base=DjangoTask,  # queued with delay_on_commit
    name="invoicing.deliver_invoice",
    ignore_result=True,
    autoretry_for=(ConnectionError, TimeoutError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=None,
)
def deliver_invoice(invoice_id: int) -> None:
    """Hand an invoice to the billing backend: deliver a finalized one, push a later status
    (paid, void, uncollectible here) to where it was delivered. Idempotent; queued after commit
    of every transition."""
    from invoicing.services import invoices

    invoices.deliver_to_backend(invoice_id=invoice_id)


@shared_task(
    name="invoicing.stripe_use_payment_method",
    ignore_result=True,
    autoretry_for=(ConnectionError, TimeoutError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=None,
)
def stripe_use_payment_method(
    stripe_customer_id: str, setup_intent_id: str = "", payment_method_id: str = ""
) -> None:
    """Make the card a customer added (Checkout in setup mode) its default for invoices, and
    resume the deliveries that awaited it. Idempotent."""
    from invoicing.stripe import payment_methods

    payment_methods.use_payment_method(
        stripe_customer_id=stripe_customer_id,
        setup_intent_id=setup_intent_id,
        payment_method_id=payment_method_id,
        now=timezone.now(),
    )


@shared_task(
    base=DjangoTask,  # queued with delay_on_commit
    bind=True,
    name="invoicing.deliver_credit_note",
    ignore_result=True,
    max_retries=None,
)
def deliver_credit_note(self, credit_note_id: int) -> None:
    """Create a credit note in Stripe (BILLING_BACKEND=stripe); transient errors retry with
    backoff, the outbox makes the write once."""
    from invoicing.stripe import credit_notes, outbox

    try:
        credit_notes.deliver_credit_note(credit_note_id=credit_note_id)
    except ConnectionError as exc:  # TransientStripeError included
        raise self.retry(
            exc=exc, countdown=outbox.retry_delay(exc, retries=self.request.retries)
        ) from exc


@shared_task(name="invoicing.stripe_report_usage", ignore_result=True)
def stripe_report_usage() -> dict[str, int]:
    """Write the due usage reports (after closes, and every few minutes for realtime); each
    is sent by its own task once the rows have committed. A no-op when reporting is off."""
    from invoicing.stripe import usage_reports

    return usage_reports.report_usage(now=timezone.now())


@shared_task(
    bind=True, name="invoicing.stripe_send_usage_report", ignore_result=True, max_retries=None
)
def stripe_send_usage_report(self, report_id: int) -> None:
    """Send one usage report to Stripe; transient errors retry with backoff (and Retry-After)."""
    from invoicing.stripe import outbox, usage_reports

    try:
        usage_reports.send_usage_report(report_id=report_id)
    except ConnectionError as exc:  # TransientStripeError included
        raise self.retry(
            exc=exc, countdown=outbox.retry_delay(exc, retries=self.request.retries)
        ) from exc


@shared_task(name="invoicing.stripe_resume_sync", ignore_result=True)
def stripe_resume_sync() -> dict[str, int]:
    """Every few minutes (beat): queue again Stripe deliveries and reports left pending."""
    from invoicing.stripe import credit_notes, invoices, usage_reports

    now = timezone.now()
    return {
        "invoices": invoices.resume_deliveries(now=now),
        "usage_reports": usage_reports.resume_usage_reports(now=now),
        "credit_notes": credit_notes.resume(now=now),
    }
