"""Our customers' Stripe customers: created on first use (our ids in its metadata), exactly
once, or linked by finance staff to an existing one.

The creation follows the outbox steps (invoicing.stripe.outbox) on the StripeCustomer row: the
request's parameters are recorded first, so a retry under the same idempotency key sends exactly
the same ones. Past the resend window, or after Stripe saved an error under the key (a 500:
the row's `key_attempt` moves on), Stripe is searched by our id before anything is created
under a new key.

The customer's payment method is Stripe's to hold (invoice_settings.default_payment_method);
the link keeps the one last seen (`record_payment_method`), which finance staff and the portal
see and which resumes the deliveries that awaited one.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.db import transaction

from audit.services import record_audit
from invoicing.models import StripeCustomer
from invoicing.stripe import client, outbox
from metering.models import Customer

logger = logging.getLogger(__name__)


def ensure_stripe_customer(*, customer_id: int, now: datetime) -> str:
    """The customer's Stripe customer id, creating the Stripe customer on first use."""
    link = _customer_intent(customer_id=customer_id, now=now)
    if link.stripe_customer_id:
        return link.stripe_customer_id
    found = None
    if link.key_attempt or outbox.past_resend_window(link.requested_at, now):
        # The key may be forgotten by now, or holds an error: look before creating anew.
        found = client.find_customer(customer_id=customer_id)
    if found is None:
        key = client.idempotency_key(
            f"cus-{customer_id}", attempt=link.key_attempt, params=link.requested_params
        )
        try:
            found = client.create_customer(params=link.requested_params, key=key)
        except client.TransientStripeError as exc:
            if exc.saved:
                outbox.bump_key(StripeCustomer, row_id=link.pk)
            raise
    return _record_stripe_customer(customer_id=customer_id, stripe_customer_id=found["id"])


@transaction.atomic
def _customer_intent(*, customer_id: int, now: datetime) -> StripeCustomer:
    customer = Customer.objects.get(pk=customer_id)
    link = outbox.get_or_create_locked(StripeCustomer, customer=customer)
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
    link = outbox.get_or_create_locked(StripeCustomer, customer=customer)
    before = link.stripe_customer_id
    if before != stripe_customer_id:  # another Stripe customer: its payment method is unknown
        link.default_payment_method = ""
        link.payment_method_at = None
    link.stripe_customer_id = stripe_customer_id
    link.source = StripeCustomer.Source.LINKED
    link.save(
        update_fields=[
            "stripe_customer_id",
            "source",
            "default_payment_method",
            "payment_method_at",
            "updated_at",
        ]
    )
    record_audit(
        action="customer.stripe_linked",
        obj=customer,
        user=user,
        customer_external_id=customer.external_id,
        data={"from": before, "stripe_customer_id": stripe_customer_id},
    )
    return link


@transaction.atomic
def record_payment_method(
    *, stripe_customer_id: str, payment_method_id: str, now: datetime
) -> StripeCustomer | None:
    """Keep the Stripe customer's default payment method as seen (from Stripe's answer or a
    webhook) on our link; None when the Stripe customer is none of ours. Audited when it
    changes."""
    link = (
        StripeCustomer.objects.select_for_update()
        .select_related("customer")
        .filter(stripe_customer_id=stripe_customer_id)
        .first()
    )
    if link is None:
        return None
    if link.default_payment_method != payment_method_id:
        before = link.default_payment_method
        link.default_payment_method = payment_method_id
        link.payment_method_at = now
        link.save(update_fields=["default_payment_method", "payment_method_at", "updated_at"])
        record_audit(
            action="customer.stripe_payment_method",
            obj=link.customer,
            customer_external_id=link.customer.external_id,
            data={"from": before, "payment_method": payment_method_id},
        )
    return link
