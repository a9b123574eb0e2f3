"""Reconciliation with Stripe: our invoices and usage reports against what Stripe holds.

Called by the Stripe backend's `reconcile` (invoicing.services.reconcile, `manage.py
reconcile`); each difference is one line of text, [] when the books agree.

An invoice is compared on its total, currency, status, items, and on what Stripe did with it:
`amount_due`, `amount_paid` and the balance it left (`ending_balance`) against what the
delivery recorded. An invoice Stripe settled without a charge (below the minimum charge, or a
credit: "paid" with amount_paid 0, carried to the customer's balance) is finalized here, not
paid, and that is no difference. Each linked customer's Stripe balance is compared with the
balance its latest finalized Stripe invoice left. A delivery awaiting a payment method is a
known state (open in Stripe, finalized here), not a difference.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Max, Min, Q, Sum

from invoicing.models import Invoice, StripeCustomer, StripeInvoiceSync, UsageReport
from invoicing.stripe import client
from invoicing.stripe.invoices import OURS_TO_STRIPE, carried_to_balance
from metering.models import Customer

S = Invoice.Status


def reconcile_with_stripe() -> list[str]:
    """Differences between our invoices and usage reports and what Stripe holds."""
    try:
        return _reconcile_invoices() + _reconcile_usage()
    except client.StripeSyncError as exc:
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
    theirs = {inv["id"]: inv for inv in client.list_invoices()}
    copies: dict[str, list[str]] = defaultdict(list)
    for inv in theirs.values():
        our_id = (inv.get("metadata") or {}).get("invoice_id")
        if our_id:
            copies[our_id].append(inv["id"])
    items_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in client.list_invoice_items():
        if item.get("invoice"):
            items_of[item["invoice"]].append(item)

    problems += _reconcile_balances(theirs)
    for invoice in ours:
        label = f"stripe: invoice {invoice.number or invoice.pk}"
        sync = getattr(invoice, "stripe_sync", None)
        known = (
            StripeInvoiceSync.Status.DELIVERED,
            StripeInvoiceSync.Status.AWAITING_PAYMENT_METHOD,
        )
        if sync is not None and sync.status not in known:
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
        settled_without_charge = invoice.status == S.FINALIZED and carried_to_balance(
            stripe_invoice
        )
        if (
            stripe_invoice.get("status") != OURS_TO_STRIPE.get(invoice.status)
            and not settled_without_charge
        ):
            problems.append(
                f"{label}: Stripe status {stripe_invoice.get('status')}, ours {invoice.status}"
            )
        if sync is not None and sync.amount_due is not None:
            for name in ("amount_due", "amount_paid", "ending_balance"):
                recorded, actual = getattr(sync, name), stripe_invoice.get(name)
                if recorded is not None and recorded != actual:
                    problems.append(f"{label}: Stripe {name} {actual} != recorded {recorded}")
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


def _reconcile_balances(theirs: dict[str, dict[str, Any]]) -> list[str]:
    """Each linked customer's Stripe balance against the one its latest finalized Stripe
    invoice left (what was carried or credited, as Stripe's invoices say)."""

    def order(inv: dict[str, Any]) -> tuple[int, int, str]:
        finalized = (inv.get("status_transitions") or {}).get("finalized_at") or 0
        return (finalized, inv.get("created") or 0, inv["id"])

    latest: dict[str, dict[str, Any]] = {}
    for inv in sorted(theirs.values(), key=order):
        if inv.get("status") not in ("draft", None) and inv.get("ending_balance") is not None:
            latest[inv["customer"]] = inv
    problems = []
    links = StripeCustomer.objects.filter(stripe_customer_id__in=list(latest)).select_related(
        "customer"
    )
    for link in links.order_by("pk"):
        assert link.stripe_customer_id is not None
        balance = client.retrieve_customer(link.stripe_customer_id).get("balance")
        expected = latest[link.stripe_customer_id]["ending_balance"]
        if balance != expected:
            problems.append(
                f"stripe: customer {link.customer.external_id}: Stripe balance {balance} != "
                f"{expected} left by invoice {latest[link.stripe_customer_id]['id']}"
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
    meter_ids = client.meter_ids_by_event_name()
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
        theirs = client.meter_usage(
            stripe_meter_id=meter_id,
            stripe_customer_id=stripe_customer_id,
            start=_minute(row["first"]),
            end=_minute(row["last"]) + timedelta(minutes=1),
        )
        if theirs != Decimal(row["total"]):
            problems.append(f"{label}: reported {row['total']}, Stripe's summaries say {theirs}")
    return problems
