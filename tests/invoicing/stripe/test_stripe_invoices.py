"""Invoices through Stripe: one Stripe invoice per invoice, one item per line, exactly once,
whatever fails between us and Stripe."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.exceptions import Retry
from django.db import transaction
from django.utils import timezone

from audit.models import AuditEntry
from invoicing import tasks
from invoicing.models import Invoice, InvoiceLine, StripeCustomer, StripeInvoiceSync
from invoicing.stripe import customers, reconcile
from invoicing.stripe import invoices as stripe_invoices
from tests.invoicing.stripe.conftest import finalize, our_lines, stripe_lines

pytestmark = pytest.mark.django_db(transaction=True)


def posts(fake):
    return [(r.path, r.idempotency_key) for r in fake.requests if r.method == "POST"]


def test_finalized_invoice_is_one_stripe_invoice_with_one_item_per_line(draft_invoice, fake_stripe):
    invoice = finalize(draft_invoice)

    [stripe_invoice] = fake_stripe.invoices_for(invoice.pk)
    assert invoice.stripe_invoice_id == stripe_invoice["id"]
    assert invoice.stripe_hosted_invoice_url == stripe_invoice["hosted_invoice_url"]
    assert invoice.stripe_hosted_invoice_url.startswith("https://invoice.stripe.com/")
    assert stripe_invoice["status"] == "paid"  # finalized, then charged
    assert stripe_invoice["total"] == invoice.total_minor == 2915
    assert stripe_invoice["currency"] == "usd"
    assert stripe_invoice["collection_method"] == "charge_automatically"
    period = invoice.period
    assert stripe_invoice["metadata"] == {
        "invoice_id": str(invoice.pk),
        "invoice_number": invoice.number,
        "period_id": str(period.pk),
        "period_start": period.start.isoformat(),
        "period_end": period.end.isoformat(),
        "customer_external_id": "acme",
    }
    assert stripe_lines(fake_stripe, stripe_invoice["id"]) == our_lines(invoice)
    items = {i["metadata"]["line_id"]: i for i in fake_stripe.items_of(stripe_invoice["id"])}
    for line in invoice.lines.select_related("meter"):
        item = items[str(line.pk)]
        assert line.stripe_invoice_item_id == item["id"]
        assert item["metadata"] == {
            "invoice_id": str(invoice.pk),
            "line_id": str(line.pk),
            "aggregate_id": str(line.aggregate_id),
            "kind": "usage",
            "meter": line.meter.code,
            "quantity": f"{line.quantity.normalize():f}",
        }
        assert item["period"] == {
            "start": int(period.start.timestamp()),
            "end": int(period.end.timestamp()) - 1,
        }
    # exactly these writes, each with the key derived from our ids
    link = StripeCustomer.objects.get(customer=invoice.customer)
    line_ids = [line.pk for line in invoice.lines.order_by("position")]
    # (the key: our ids, then the fingerprint of the parameters sent under it)
    assert [(path, key.rsplit("-", 1)[0]) for path, key in posts(fake_stripe)] == [
        ("/v1/customers", f"test-cus-{invoice.customer_id}"),
        ("/v1/invoices", f"test-inv-{invoice.pk}"),
        *[("/v1/invoiceitems", f"test-inv-{invoice.pk}-item-{pk}") for pk in line_ids],
        (f"/v1/invoices/{invoice.stripe_invoice_id}/finalize", f"test-inv-{invoice.pk}-finalize"),
        (f"/v1/invoices/{invoice.stripe_invoice_id}/pay", f"test-inv-{invoice.pk}-pay"),
    ]
    assert all(r.stripe_version == "2026-10-28.endive" for r in fake_stripe.requests)
    customer = fake_stripe.customers[link.stripe_customer_id]
    assert customer["metadata"] == {"customer_id": str(invoice.customer_id), "external_id": "acme"}
    sync = StripeInvoiceSync.objects.get(invoice=invoice)
    assert (sync.status, sync.attempts, sync.stripe_status) == ("delivered", 1, "paid")
    created = AuditEntry.objects.get(action="invoice.stripe_created")
    assert created.data["stripe_invoice_id"] == stripe_invoice["id"]
    assert created.data["stripe_customer_id"] == link.stripe_customer_id
    delivered = AuditEntry.objects.get(action="invoice.stripe_delivered")
    assert delivered.data["stripe_invoice_items"] == {
        str(line.pk): line.stripe_invoice_item_id for line in invoice.lines.all()
    }
    assert AuditEntry.objects.filter(action="customer.stripe_created").count() == 1

    # delivering again (a redelivered task) writes nothing
    before = len(fake_stripe.requests)
    tasks.deliver_invoice.apply(args=[invoice.pk])
    assert fake_stripe.requests[before:] == []


def test_send_invoice_collection_sends_it_once(draft_invoice, fake_stripe, settings):
    settings.STRIPE_COLLECTION_METHOD = "send_invoice"
    settings.STRIPE_DAYS_UNTIL_DUE = 14
    invoice = finalize(draft_invoice)
    [stripe_invoice] = fake_stripe.invoices_for(invoice.pk)
    assert stripe_invoice["status"] == "open"
    assert stripe_invoice["days_until_due"] == 14
    assert fake_stripe.emails_sent == {stripe_invoice["id"]: 1}
    stripe_invoices.deliver_invoice(invoice_id=invoice.pk)
    assert fake_stripe.emails_sent == {stripe_invoice["id"]: 1}
    assert fake_stripe.requests_to("POST", r"/v1/invoices/.*/pay") == []
    # one path: Stripe e-mails it when finalized with auto_advance; we never call /send
    assert fake_stripe.requests_to("POST", r"/v1/invoices/.*/send") == []
    [finalized] = fake_stripe.requests_to("POST", r"/v1/invoices/.*/finalize")
    assert finalized.params == {"auto_advance": "true"}


def test_cap_credit_line_is_a_negative_item(draft_invoice, fake_stripe):
    InvoiceLine.objects.create(
        invoice=draft_invoice,
        position=10,
        kind=InvoiceLine.Kind.CAP_CREDIT,
        description="Budget cap credit (this period): usage beyond the cap is not charged",
        quantity=0,
        amount_minor=-415,
    )
    Invoice.objects.filter(pk=draft_invoice.pk).update(total_minor=2500)
    invoice = finalize(draft_invoice)
    [stripe_invoice] = fake_stripe.invoices_for(invoice.pk)
    assert stripe_invoice["total"] == 2500
    credit = invoice.lines.get(kind="cap_credit")
    [item] = [i for i in fake_stripe.items_of(stripe_invoice["id"]) if i["amount"] < 0]
    assert item["amount"] == -415 and item["metadata"]["line_id"] == str(credit.pk)
    assert "aggregate_id" not in item["metadata"]
    assert stripe_lines(fake_stripe, stripe_invoice["id"]) == our_lines(invoice)


# (fault, request it hits, how many times that write is sent under the faulted key). A 429 is
# refused before the endpoint runs (nothing saved): resent under the same key. A 500 is saved
# under its key by Stripe (replayed for a day): the retry looks up, then writes under a new
# attempt key, once. After a write was applied and its answer lost (timeout, reset), the retry
# finds it (the invoice by its metadata, the items by line, the status before finalizing or
# paying) or Stripe replays the first answer.
FAULTS = [
    ("500", r"/v1/invoiceitems", 1),
    ("429", r"/v1/invoiceitems", 2),
    ("timeout", r"/v1/invoiceitems", 1),
    ("reset", r"/v1/invoiceitems", 1),
    ("reset", r"/v1/customers", 2),
    ("timeout", r"/v1/invoices", 1),
    ("reset", r"/v1/invoices", 1),
    ("500", r"/v1/invoices/.*/finalize", 1),
    ("500", r"/v1/customers", 1),
    ("500", r"/v1/invoices", 1),
    ("500", r"/v1/invoices/.*/pay", 1),
    ("reset", r"/v1/invoices/.*/finalize", 1),
    ("timeout", r"/v1/invoices/.*/pay", 1),
    ("reset", r"/v1/invoices/.*/pay", 1),
]


@pytest.mark.parametrize(("kind", "path", "sent"), FAULTS, ids=[f"{k}:{p}" for k, p, _ in FAULTS])
def test_each_fault_then_retry_ends_with_exactly_our_invoice(
    draft_invoice, fake_stripe, kind, path, sent
):
    fake_stripe.inject(kind, path=path, delay=1.0)
    with pytest.raises(Retry):  # the delivery task asks Celery to retry it later
        finalize(draft_invoice)
    tasks.deliver_invoice.apply(args=[draft_invoice.pk])  # the retry
    invoice = Invoice.objects.get(pk=draft_invoice.pk)

    [stripe_invoice] = fake_stripe.invoices_for(invoice.pk)  # one invoice, no duplicate
    assert stripe_invoice["status"] == "paid"
    assert stripe_invoice["total"] == invoice.total_minor
    assert stripe_lines(fake_stripe, stripe_invoice["id"]) == our_lines(invoice)
    assert len(fake_stripe.invoice_items) == invoice.lines.count()
    assert len(fake_stripe.customers) == 1
    [faulted] = [r for r in fake_stripe.requests if r.fault == kind]
    same_key = [r for r in fake_stripe.requests if r.idempotency_key == faulted.idempotency_key]
    assert len(same_key) == sent
    applied_first = kind in {"timeout", "reset"}
    assert [r.replayed for r in same_key] == [False] + [applied_first] * (sent - 1)
    if kind == "500":  # resent once under the next attempt's key, and done
        [resent] = [
            r
            for r in fake_stripe.requests
            if r.path == faulted.path
            and r.params == faulted.params
            and r.idempotency_key != faulted.idempotency_key
        ]
        assert "-a1-" in resent.idempotency_key and resent.status == 200
    sync = StripeInvoiceSync.objects.get(invoice=invoice)
    assert (sync.status, sync.attempts) == ("delivered", 2)


def test_rerun_after_crash_between_stripe_call_and_commit(draft_invoice, fake_stripe, monkeypatch):
    original = stripe_invoices._record_line_item
    recorded = []

    def crash_on_second(**kwargs):
        if len(recorded) == 1:
            raise RuntimeError("worker killed before the commit")
        recorded.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(stripe_invoices, "_record_line_item", crash_on_second)
    with pytest.raises(RuntimeError):
        finalize(draft_invoice)
    invoice = Invoice.objects.get(pk=draft_invoice.pk)
    assert len(fake_stripe.invoice_items) == 2  # Stripe has the second item, we do not know it
    assert invoice.lines.filter(stripe_invoice_item_id__isnull=False).count() == 1

    monkeypatch.setattr(stripe_invoices, "_record_line_item", original)
    tasks.deliver_invoice.apply(args=[invoice.pk])  # the redelivered task, or the resume beat

    [stripe_invoice] = fake_stripe.invoices_for(invoice.pk)
    assert stripe_lines(fake_stripe, stripe_invoice["id"]) == our_lines(invoice)
    assert len(fake_stripe.invoice_items) == 3
    assert len(fake_stripe.requests_to("POST", "/v1/invoiceitems")) == 3  # found, not resent
    assert stripe_invoice["status"] == "paid"
    assert invoice.lines.filter(stripe_invoice_item_id__isnull=True).count() == 0


def test_rerun_after_crash_once_the_invoice_was_created(draft_invoice, fake_stripe, monkeypatch):
    original = stripe_invoices._record_stripe_invoice

    def crash(**kwargs):
        raise RuntimeError("worker killed before the commit")

    monkeypatch.setattr(stripe_invoices, "_record_stripe_invoice", crash)
    with pytest.raises(RuntimeError):
        finalize(draft_invoice)
    assert len(fake_stripe.invoices) == 1
    assert Invoice.objects.get(pk=draft_invoice.pk).stripe_invoice_id is None

    monkeypatch.setattr(stripe_invoices, "_record_stripe_invoice", original)
    tasks.deliver_invoice.apply(args=[draft_invoice.pk])
    invoice = Invoice.objects.get(pk=draft_invoice.pk)
    [stripe_invoice] = fake_stripe.invoices_for(invoice.pk)
    assert invoice.stripe_invoice_id == stripe_invoice["id"]
    assert len(fake_stripe.requests_to("POST", "/v1/invoices")) == 1  # looked up, not recreated
    assert stripe_lines(fake_stripe, stripe_invoice["id"]) == our_lines(invoice)


def test_unresolved_after_24_hours_is_flagged_not_resent(
    draft_invoice, fake_stripe, monkeypatch, clock
):
    original = stripe_invoices._record_line_item

    def crash(**kwargs):
        raise RuntimeError("worker killed before the commit")

    monkeypatch.setattr(stripe_invoices, "_record_line_item", crash)
    with pytest.raises(RuntimeError):
        finalize(draft_invoice)
    monkeypatch.setattr(stripe_invoices, "_record_line_item", original)
    clock.shift(timedelta(hours=25))
    fake_stripe.forget_idempotency_keys()  # Stripe may prune keys after 24 hours
    before = len(fake_stripe.requests)

    tasks.deliver_invoice.apply(args=[draft_invoice.pk])

    assert fake_stripe.requests[before:] == []  # nothing resent with a key Stripe forgot
    sync = StripeInvoiceSync.objects.get(invoice=draft_invoice)
    assert sync.status == "needs_attention"
    assert AuditEntry.objects.filter(action="invoice.stripe_needs_attention").count() == 1
    assert any("delivery needs_attention" in p for p in reconcile.reconcile_with_stripe())

    # finance staff check Stripe and retry: what exists is found, the rest is created once
    stripe_invoices.retry_invoice_sync(invoice_id=draft_invoice.pk, user=None, now=timezone.now())
    invoice = Invoice.objects.get(pk=draft_invoice.pk)
    [stripe_invoice] = fake_stripe.invoices_for(invoice.pk)
    assert stripe_lines(fake_stripe, stripe_invoice["id"]) == our_lines(invoice)
    assert len(fake_stripe.invoice_items) == invoice.lines.count()
    assert StripeInvoiceSync.objects.get(invoice=invoice).status == "delivered"
    assert AuditEntry.objects.filter(action="invoice.stripe_retried").count() == 1


def test_permanent_error_is_recorded_and_not_retried(draft_invoice, fake_stripe):
    customers.link_stripe_customer(
        customer_id=draft_invoice.customer_id, stripe_customer_id="cus_gone"
    )
    invoice = finalize(draft_invoice)

    sync = StripeInvoiceSync.objects.get(invoice=invoice)
    assert sync.status == "failed" and "No such customer" in sync.last_error
    assert len(fake_stripe.requests_to("POST", "/v1/invoices")) == 1
    failed = AuditEntry.objects.get(action="invoice.stripe_failed")
    assert failed.data["http_status"] == 404
    assert fake_stripe.invoices == {}

    # finance staff link the right customer and retry
    customer = fake_stripe.create_customer({"name": "Acme Corp"})
    customers.link_stripe_customer(
        customer_id=invoice.customer_id, stripe_customer_id=customer["id"]
    )
    stripe_invoices.retry_invoice_sync(invoice_id=invoice.pk, now=invoice.finalized_at)
    [stripe_invoice] = fake_stripe.invoices_for(invoice.pk)
    assert stripe_invoice["customer"] == customer["id"]
    assert StripeInvoiceSync.objects.get(invoice=invoice).status == "delivered"


def test_declined_card_leaves_the_invoice_open_and_delivered(draft_invoice, fake_stripe):
    customer = fake_stripe.create_customer({"name": "Acme Corp"})
    customers.link_stripe_customer(
        customer_id=draft_invoice.customer_id, stripe_customer_id=customer["id"]
    )
    fake_stripe.decline_payments(customer["id"])
    invoice = finalize(draft_invoice)
    [stripe_invoice] = fake_stripe.invoices_for(invoice.pk)
    assert stripe_invoice["status"] == "open"  # Stripe keeps collecting
    sync = StripeInvoiceSync.objects.get(invoice=invoice)
    # a payment failure with Stripe's reason, not a delivery failure
    assert sync.status == "delivered" and sync.last_error == ""
    assert "card was declined" in sync.payment_failure
    assert "card_declined" in sync.payment_failure and "generic_decline" in sync.payment_failure
    assert len(fake_stripe.requests_to("POST", r"/v1/invoices/.*/pay")) == 1
    assert invoice.status == "finalized"


def test_no_stripe_call_inside_a_transaction(draft_invoice):
    finalize_now = draft_invoice.created_at + timedelta(hours=2)
    from invoicing.services import invoices

    with pytest.raises(RuntimeError, match="inside a database transaction"):
        with transaction.atomic():
            invoices.finalize_invoice(invoice_id=draft_invoice.pk, now=finalize_now)
            stripe_invoices.deliver_invoice(invoice_id=draft_invoice.pk)


def test_a_delivery_whose_task_was_lost_is_resumed_once(draft_invoice, fake_stripe, clock):
    with pytest.MonkeyPatch.context() as patch:  # the queued delivery task is lost
        patch.setattr(tasks.deliver_invoice, "delay_on_commit", lambda *args: None)
        invoice = finalize(draft_invoice)
    assert fake_stripe.requests == []

    # within STALE_ATTEMPT of the finalization the task may still come: nothing is queued
    assert stripe_invoices.resume_deliveries(now=invoice.finalized_at + timedelta(minutes=9)) == 0
    assert fake_stripe.requests == []

    result = tasks.stripe_resume_sync.apply().result  # the beat, an hour after the finalization
    assert result == {"invoices": 1, "usage_reports": 0, "credit_notes": 0}
    [stripe_invoice] = fake_stripe.invoices_for(invoice.pk)
    assert stripe_invoice["status"] == "paid"
    assert stripe_lines(fake_stripe, stripe_invoice["id"]) == our_lines(invoice)
    sync = StripeInvoiceSync.objects.get(invoice=invoice)
    assert (sync.status, sync.attempts) == ("delivered", 1)

    before = len(fake_stripe.requests)
    assert tasks.stripe_resume_sync.apply().result == {
        "invoices": 0,
        "usage_reports": 0,
        "credit_notes": 0,
    }
    assert fake_stripe.requests[before:] == []


def test_a_delivery_left_pending_by_a_lost_worker_is_resumed_once_stale(
    draft_invoice, fake_stripe, monkeypatch, clock
):
    def crash(**kwargs):
        raise RuntimeError("worker killed before the commit")

    monkeypatch.setattr(stripe_invoices, "_record_line_item", crash)
    with pytest.raises(RuntimeError):
        finalize(draft_invoice)
    monkeypatch.undo()
    sync = StripeInvoiceSync.objects.get(invoice=draft_invoice)
    assert (sync.status, sync.attempts) == ("pending", 1)
    last_attempt = sync.last_attempt_at

    # a pending delivery attempted less than STALE_ATTEMPT ago may still be under way
    assert stripe_invoices.resume_deliveries(now=last_attempt + timedelta(minutes=9)) == 0
    assert StripeInvoiceSync.objects.get(pk=sync.pk).attempts == 1

    clock.shift(timedelta(minutes=11))
    assert tasks.stripe_resume_sync.apply().result == {
        "invoices": 1,
        "usage_reports": 0,
        "credit_notes": 0,
    }
    sync.refresh_from_db()
    assert (sync.status, sync.attempts) == ("delivered", 2)
    [stripe_invoice] = fake_stripe.invoices_for(draft_invoice.pk)
    assert stripe_lines(fake_stripe, stripe_invoice["id"]) == our_lines(draft_invoice)
    assert len(fake_stripe.invoice_items) == draft_invoice.lines.count()
    assert tasks.stripe_resume_sync.apply().result == {
        "invoices": 0,
        "usage_reports": 0,
        "credit_notes": 0,
    }


def test_a_key_in_flight_is_retried_later_and_the_invoice_created_once(draft_invoice, fake_stripe):
    # Stripe is still creating the invoice when our client gives up (0.5 s); the immediate
    # retry finds nothing yet and resends under the same key: 409, transient. Later, the same
    # key replays the creation.
    fake_stripe.inject("slow", path=r"/v1/invoices", delay=1.5)
    with pytest.raises(Retry):
        finalize(draft_invoice)
    with pytest.raises(Retry):
        tasks.deliver_invoice.apply(args=[draft_invoice.pk], throw=True)
    [conflict] = [r for r in fake_stripe.requests if r.status == 409]
    assert conflict.path == "/v1/invoices"
    sync = StripeInvoiceSync.objects.get(invoice=draft_invoice)
    assert sync.status == "pending" and sync.key_attempt == 0  # 409 saves nothing: same key
    deadline = timezone.now() + timedelta(seconds=5)
    while fake_stripe.in_flight and timezone.now() < deadline:
        pass
    tasks.deliver_invoice.apply(args=[draft_invoice.pk])
    invoice = Invoice.objects.get(pk=draft_invoice.pk)
    [stripe_invoice] = fake_stripe.invoices_for(invoice.pk)
    assert stripe_invoice["status"] == "paid"
    assert StripeInvoiceSync.objects.get(invoice=invoice).status == "delivered"


def test_a_saved_500_then_a_relinked_customer_never_reuses_a_key_with_other_parameters(
    draft_invoice, fake_stripe
):
    fake_stripe.inject("500", path=r"/v1/invoices")
    with pytest.raises(Retry):
        finalize(draft_invoice)
    sync = StripeInvoiceSync.objects.get(invoice=draft_invoice)
    assert sync.key_attempt == 1  # Stripe keeps that 500 under the key: the next one is new
    # finance staff link the customer to another Stripe customer meanwhile
    other = fake_stripe.create_customer({"name": "Acme (existing)"})
    fake_stripe.attach_card(other["id"])
    customers.link_stripe_customer(
        customer_id=draft_invoice.customer_id, stripe_customer_id=other["id"]
    )
    tasks.deliver_invoice.apply(args=[draft_invoice.pk])
    invoice = Invoice.objects.get(pk=draft_invoice.pk)
    [stripe_invoice] = fake_stripe.invoices_for(invoice.pk)
    assert stripe_invoice["customer"] == other["id"] and stripe_invoice["status"] == "paid"
    keys: dict[str, object] = {}
    for request in fake_stripe.requests:
        if request.method == "POST" and request.idempotency_key:
            assert keys.setdefault(request.idempotency_key, request.params) == request.params
    assert not [r for r in fake_stripe.requests if r.status == 400]


def test_more_lines_than_stripe_takes_are_refused_before_any_call(draft_invoice, fake_stripe):
    line = draft_invoice.lines.first()
    InvoiceLine.objects.bulk_create(
        [
            InvoiceLine(
                invoice=draft_invoice,
                position=100 + n,
                kind=InvoiceLine.Kind.ADJUSTMENT,
                description=f"extra {n}",
                quantity=1,
                amount_minor=0,
                meter=line.meter,
            )
            for n in range(stripe_invoices.MAX_INVOICE_ITEMS)
        ]
    )
    invoice = finalize(draft_invoice)
    sync = StripeInvoiceSync.objects.get(invoice=invoice)
    assert sync.status == "failed" and "at most 250 items" in sync.last_error
    assert fake_stripe.requests == []
