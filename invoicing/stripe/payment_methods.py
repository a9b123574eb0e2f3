"""Payment methods: how a customer gives Stripe a card to charge, and what waits for one.

Customers created here have no payment method, and Stripe refuses to charge an invoice without
one. A customer adds one on a Stripe Checkout page in `setup` mode (`start_setup`: linked from
the portal's billing page, or a link finance staff create in the admin and send). Checkout
attaches the card to the Stripe customer but does not make it the invoices' default: when its
webhook arrives (`checkout.session.completed`, or `setup_intent.succeeded`), a task makes it
the customer's `invoice_settings.default_payment_method` (`use_payment_method`) and resumes
the deliveries that awaited a method. A default set elsewhere (the dashboard) arrives as
`customer.updated` and resumes them too.

Whether a customer can be charged is asked of Stripe (`can_charge`), never read from an error
text; a delivery of a customer without a method is held as "awaiting payment method"
(StripeInvoiceSync), visible in the admin and the portal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction

from invoicing import tasks
from invoicing.models import StripeCustomer, StripeInvoiceSync, StripeWebhookEvent
from invoicing.stripe import client
from invoicing.stripe.customers import ensure_stripe_customer, record_payment_method
from metering.models import Customer

AWAITING = StripeInvoiceSync.Status.AWAITING_PAYMENT_METHOD


def expanded_id(value: Any) -> str | None:
    """The id in an expandable field: Stripe sends the id, or the object itself when expanded."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def can_charge(stripe_customer_id: str, *, now: datetime) -> bool:
    """Whether Stripe holds a payment method it charges the customer's invoices to (asked of
    Stripe; what it says is kept on our link)."""
    stripe_customer = client.retrieve_customer(stripe_customer_id)
    settings_ = stripe_customer.get("invoice_settings") or {}
    method = expanded_id(
        settings_.get("default_payment_method") or stripe_customer.get("default_source")
    )
    record_payment_method(
        stripe_customer_id=stripe_customer_id, payment_method_id=method or "", now=now
    )
    return client.has_payment_method(stripe_customer)


def start_setup(*, customer_id: int, success_url: str, cancel_url: str, now: datetime) -> str:
    """A Stripe Checkout page (setup mode) where the customer enters a card: its URL.

    The idempotency key is our customer id and the minute, so a double click opens the same
    page; a later request, a new one (a session expires after a day)."""
    customer = Customer.objects.get(pk=customer_id)
    stripe_customer_id = ensure_stripe_customer(customer_id=customer_id, now=now)
    params: dict[str, Any] = {
        "mode": "setup",
        "customer": stripe_customer_id,
        "currency": customer.currency.lower(),
        "success_url": success_url,
        "cancel_url": cancel_url,
        "client_reference_id": str(customer.pk),
        "metadata": {"customer_id": str(customer.pk), "external_id": customer.external_id},
        "setup_intent_data": {"metadata": {"customer_id": str(customer.pk)}},
    }
    minute = client.epoch(now) // 60
    session = client.create_setup_session(
        params=params,
        key=client.idempotency_key(f"cus-{customer.pk}-setup-{minute}", params=params),
    )
    return str(session["url"])


def use_payment_method(
    *,
    stripe_customer_id: str,
    now: datetime,
    setup_intent_id: str = "",
    payment_method_id: str = "",
) -> str | None:
    """Make the card a completed setup produced the customer's default for invoices, then
    resume what awaited it. Idempotent (the key is the customer and the payment method).
    Returns the payment method's id, or None when there is none to use (the setup did not
    succeed, or the Stripe customer is none of ours)."""
    link = StripeCustomer.objects.filter(stripe_customer_id=stripe_customer_id).first()
    if link is None:
        return None
    if not payment_method_id:
        intent = client.retrieve_setup_intent(setup_intent_id)
        method = expanded_id(intent.get("payment_method"))
        if intent.get("status") != "succeeded" or not method:
            return None
        payment_method_id = str(method)
    client.set_default_payment_method(
        stripe_customer_id,
        payment_method_id=payment_method_id,
        key=client.idempotency_key(
            f"cus-{link.customer_id}-default-pm",
            params=client.default_payment_method_params(payment_method_id),
        ),
    )
    record_payment_method(
        stripe_customer_id=stripe_customer_id, payment_method_id=payment_method_id, now=now
    )
    resume_awaiting(customer_id=link.customer_id)
    return payment_method_id


@transaction.atomic
def resume_awaiting(*, customer_id: int) -> int:
    """Queue again the customer's deliveries that awaited a payment method; how many."""
    syncs = list(
        StripeInvoiceSync.objects.select_for_update().filter(
            invoice__customer_id=customer_id, status=AWAITING
        )
    )
    for sync in syncs:
        sync.status = StripeInvoiceSync.Status.PENDING
        sync.first_attempt_at = None  # a new 24-hour window: the customer acted
        sync.save(update_fields=["status", "first_attempt_at", "updated_at"])
        tasks.deliver_invoice.delay_on_commit(sync.invoice_id)
    return len(syncs)


# --- Webhook handlers (registered in invoicing.stripe.webhooks.HANDLERS) --------------------


def _queue_use(**kwargs: str) -> None:
    transaction.on_commit(lambda: tasks.stripe_use_payment_method.delay(**kwargs), robust=True)


def _ours(row: StripeWebhookEvent, stripe_customer_id: Any) -> bool:
    if not isinstance(stripe_customer_id, str) or not stripe_customer_id:
        row.detail = "no customer on the object"
        return False
    if not StripeCustomer.objects.filter(stripe_customer_id=stripe_customer_id).exists():
        row.detail = "not one of our customers"
        return False
    return True


def apply_checkout_completed(row: StripeWebhookEvent, obj: dict[str, Any]) -> None:
    """A setup-mode Checkout session completed: use its SetupIntent's card (a task: Stripe is
    never called inside the webhook's transaction)."""
    if obj.get("object") != "checkout.session" or obj.get("mode") != "setup":
        row.detail = "not a setup-mode Checkout session"
        return
    setup_intent = expanded_id(obj.get("setup_intent"))
    if not _ours(row, obj.get("customer")):
        return
    if not setup_intent:
        row.detail = "the session names no SetupIntent"
        return
    _queue_use(stripe_customer_id=obj["customer"], setup_intent_id=setup_intent)
    row.outcome = StripeWebhookEvent.Outcome.APPLIED
    row.detail = f"setting the card of {setup_intent} as the default payment method"


def apply_setup_intent_succeeded(row: StripeWebhookEvent, obj: dict[str, Any]) -> None:
    if obj.get("object") != "setup_intent" or obj.get("status") != "succeeded":
        row.detail = "not a succeeded SetupIntent"
        return
    method = expanded_id(obj.get("payment_method"))
    if not _ours(row, obj.get("customer")):
        return
    if not method:
        row.detail = "the SetupIntent names no payment method"
        return
    _queue_use(stripe_customer_id=obj["customer"], payment_method_id=method)
    row.outcome = StripeWebhookEvent.Outcome.APPLIED
    row.detail = f"setting {method} as the default payment method"


def apply_customer_updated(row: StripeWebhookEvent, obj: dict[str, Any]) -> None:
    """The customer's default payment method as Stripe now holds it (set in the dashboard,
    say): kept on our link; a new one resumes what awaited it."""
    if obj.get("object") != "customer" or not _ours(row, obj.get("id")):
        return
    settings_ = obj.get("invoice_settings") or {}
    method = (
        expanded_id(settings_.get("default_payment_method"))
        if isinstance(settings_, dict)
        else None
    ) or ""
    link = record_payment_method(
        stripe_customer_id=obj["id"], payment_method_id=method, now=row.created
    )
    row.outcome = StripeWebhookEvent.Outcome.APPLIED
    if link is not None and method:
        resumed = resume_awaiting(customer_id=link.customer_id)
        row.detail = f"default payment method {method}; {resumed} deliveries resumed"
    else:
        row.detail = "no default payment method"


# --- What the customer and finance staff see --------------------------------------------------


@dataclass(frozen=True)
class BillingState:
    """A customer's payment state as recorded here (no Stripe call)."""

    payment_method: str
    payment_method_at: datetime | None
    awaiting: list[StripeInvoiceSync]
    declined: list[StripeInvoiceSync]
    carried: list[StripeInvoiceSync]


def billing_state(*, customer_id: int) -> BillingState:
    link = StripeCustomer.objects.filter(customer_id=customer_id).first()
    syncs = StripeInvoiceSync.objects.filter(invoice__customer_id=customer_id).select_related(
        "invoice"
    )
    open_here = syncs.filter(invoice__status="finalized").order_by("invoice__number")
    return BillingState(
        payment_method=link.default_payment_method if link else "",
        payment_method_at=link.payment_method_at if link else None,
        awaiting=list(open_here.filter(status=AWAITING)),
        declined=list(open_here.exclude(payment_failure="")),
        carried=[s for s in open_here if carried(s)],
    )


def carried(sync: StripeInvoiceSync) -> bool:
    """Whether Stripe settled the invoice without a charge (below the minimum charge, or a
    credit), as last seen: its amount went to the customer's Stripe balance."""
    return (
        sync.stripe_status == "paid"
        and sync.amount_paid == 0
        and ((sync.amount_due or 0) > 0 or sync.invoice.total_minor < 0)
    )
