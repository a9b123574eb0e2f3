"""The finance back office: pages, actions through services, audit with the user, documents."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.contrib import messages
from django.contrib.auth.models import Group, User
from django.test import Client, override_settings
from django.urls import reverse

from audit.models import AuditEntry
from invoicing.documents import render_invoice_document
from invoicing.models import (
    BillingPeriod,
    Invoice,
    InvoiceLine,
    Price,
    PricePlan,
    PriceTier,
    Subscription,
)
from invoicing.pricing import price_spec
from invoicing.services import closing, invoices, plans, subscriptions
from metering.currencies import format_unit_amount
from metering.models import UsageAggregate
from metering.units import format_quantity
from tests.factories import CustomerFactory
from tests.invoicing.conftest import T0
from tests.invoicing.test_closing import usage_events

pytestmark = pytest.mark.django_db
H = timedelta(hours=1)
GRACE = {"BILLING_GRACE_PERIOD": 600, "BILLING_REVIEW_PERIOD": 1800}
CLOSE_AT = T0 + H + timedelta(minutes=10)  # the first hour is due: its end plus the grace


@pytest.fixture
def finance_user(db):
    """A staff user whose only permissions come from the Finance group's data migrations."""
    user = User.objects.create_user("fran", password="not-used", is_staff=True)
    user.groups.add(Group.objects.get(name="Finance"))
    return user


@pytest.fixture
def finance(finance_user):
    client = Client()
    client.force_login(finance_user)
    return client


@pytest.fixture
def closed_invoice(subscribed, record, settings):
    """The first hour of acme's usage (DESIGN example plan) closed into a draft invoice."""
    settings.BILLING_GRACE_PERIOD = 600
    record(usage_events(), now=T0 + timedelta(minutes=20))
    closing.close_due_periods(now=CLOSE_AT)
    return Invoice.objects.get(period__start=T0)


def admin_url(model: str, view: str = "changelist", *args) -> str:
    app = "audit" if model == "auditentry" else "invoicing"  # the audit log has its own app
    return reverse(f"admin:{app}_{model}_{view}", args=args)


def run_action(client, model, action, pks, **extra):
    data = {"action": action, "_selected_action": [str(pk) for pk in pks], "index": "0", **extra}
    return client.post(admin_url(model), data, follow=True)


def messages_of(response) -> list[tuple[int, str]]:
    """The messages shown on the page the action led to (each shown once)."""
    return [(m.level, str(m)) for m in response.context["messages"]]


def audit_actions() -> list[tuple[str, str]]:
    return list(AuditEntry.objects.order_by("id").values_list("action", "actor"))


# --- Pages ----------------------------------------------------------------------------------


def test_every_page_renders_for_the_finance_group(finance, finance_user, closed_invoice):
    assert not finance_user.is_superuser
    period = closed_invoice.period
    price = Price.objects.get(plan=period.plan, meter__code="llm_tokens")
    objects = {
        "priceplan": period.plan.pk,
        "price": price.pk,
        "subscription": Subscription.objects.get().pk,
        "billingperiod": period.pk,
        "invoice": closed_invoice.pk,
        "auditentry": AuditEntry.objects.first().pk,
    }
    for model, pk in objects.items():
        assert finance.get(admin_url(model)).status_code == 200, model
        assert finance.get(admin_url(model, "change", pk)).status_code == 200, model
    aggregate = UsageAggregate.objects.first()
    assert finance.get(reverse("admin:metering_usageaggregate_changelist")).status_code == 200
    url = reverse("admin:metering_usageaggregate_change", args=[aggregate.pk])
    assert finance.get(url).status_code == 200
    for model in ("priceplan", "price", "subscription"):
        assert finance.get(admin_url(model, "add")).status_code == 200, model
    # filters, search and the date drill-down render too
    assert finance.get(admin_url("invoice"), {"q": "acme", "status": "draft"}).status_code == 200
    assert finance.get(admin_url("billingperiod"), {"start__year": "2026"}).status_code == 200
    assert finance.get(admin_url("auditentry"), {"q": "acme"}).status_code == 200


def test_read_only_records_cannot_be_added_changed_or_deleted(finance, closed_invoice):
    entry = AuditEntry.objects.first()
    for model, pk in [
        ("invoice", closed_invoice.pk),
        ("billingperiod", closed_invoice.period.pk),
        ("auditentry", entry.pk),
    ]:
        assert finance.get(admin_url(model, "add")).status_code == 403, model
        assert finance.get(admin_url(model, "delete", pk)).status_code == 403, model
        assert finance.post(admin_url(model, "change", pk), {}).status_code == 403, model
    page = finance.get(admin_url("invoice", "change", closed_invoice.pk)).content.decode()
    assert 'name="status"' not in page and "lines-0-amount_minor" not in page
    assert AuditEntry.objects.filter(pk=entry.pk).exists()


# --- Periods --------------------------------------------------------------------------------


@override_settings(**GRACE)
def test_close_now_closes_a_due_period_and_leaves_a_running_one(
    finance, subscribed, record, finance_user
):
    record(usage_events(), now=T0 + timedelta(minutes=20))
    subscription = Subscription.objects.get(customer=subscribed)
    subscriptions.ensure_periods(subscription=subscription, now=T0 + H)  # the second hour
    first = BillingPeriod.objects.get(start=T0)
    second = BillingPeriod.objects.get(start=T0 + H)

    with time_machine.travel(CLOSE_AT, tick=False):
        response = run_action(finance, "billingperiod", "close_now", [first.pk, second.pk])

    assert response.redirect_chain == [(admin_url("billingperiod"), 302)]
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, first.closed_at) == ("closed", CLOSE_AT)
    assert second.status == "open"
    invoice = Invoice.objects.get()
    assert (invoice.period_id, invoice.total_minor, invoice.status) == (first.pk, 2915, "draft")
    assert messages_of(response) == [
        (messages.SUCCESS, f"Closed: {first}"),
        (messages.WARNING, f"Not due yet (or an earlier period is open): {second}"),
    ]
    requested = AuditEntry.objects.filter(action="admin.period_close_requested").order_by("id")
    assert [(e.object_id, e.actor, e.actor_id, e.data) for e in requested] == [
        (str(first.pk), "fran", finance_user.pk, {"outcome": "closed", "invoice_id": invoice.pk}),
        (str(second.pk), "fran", finance_user.pk, {"outcome": "not_due"}),
    ]

    with time_machine.travel(CLOSE_AT + H, tick=False):
        again = run_action(finance, "billingperiod", "close_now", [first.pk])
    assert messages_of(again) == [(messages.INFO, f"Already closed: {first}")]
    assert (
        Invoice.objects.count() == 1
        and AuditEntry.objects.filter(action="period.closed").count() == 1
    )


# --- Invoices -------------------------------------------------------------------------------


def test_finalize_action_waits_for_the_usage_summary(finance, closed_invoice):
    """Finance may skip the review period, not the summary: no one is charged untold."""
    with time_machine.travel(CLOSE_AT + timedelta(minutes=1), tick=False):
        response = run_action(finance, "invoice", "finalize", [closed_invoice.pk])
    closed_invoice.refresh_from_db()
    assert (closed_invoice.status, closed_invoice.number) == ("draft", None)
    [(level, text)] = messages_of(response)
    assert level == messages.ERROR and "has not had the usage summary yet" in text
    assert not AuditEntry.objects.filter(action="invoice.finalized").exists()


def test_finalize_action_numbers_a_draft(finance, closed_invoice, finance_user):
    invoices.mark_summary_sent(invoice_id=closed_invoice.pk, at=CLOSE_AT)
    with time_machine.travel(CLOSE_AT + timedelta(minutes=1), tick=False):
        response = run_action(finance, "invoice", "finalize", [closed_invoice.pk])
    closed_invoice.refresh_from_db()
    assert (closed_invoice.status, closed_invoice.number) == ("finalized", "INV-2026-000001")
    assert closed_invoice.finalized_at == CLOSE_AT + timedelta(minutes=1)
    assert messages_of(response) == [(messages.SUCCESS, "Now finalized: INV-2026-000001")]
    entry = AuditEntry.objects.get(action="invoice.finalized")
    assert (entry.actor, entry.actor_id, entry.object_id) == (
        "fran",
        finance_user.pk,
        str(closed_invoice.pk),
    )
    assert (entry.data["from"], entry.data["number"]) == ("draft", "INV-2026-000001")

    twice = run_action(finance, "invoice", "finalize", [closed_invoice.pk])
    assert messages_of(twice) == [(messages.INFO, "Already finalized: INV-2026-000001")]
    assert AuditEntry.objects.filter(action="invoice.finalized").count() == 1


def _finalized(invoice):
    invoices.mark_summary_sent(invoice_id=invoice.pk, at=CLOSE_AT)  # finalization waits for it
    return invoices.finalize_invoice(invoice_id=invoice.pk, now=CLOSE_AT)


def test_void_asks_for_a_reason_and_records_it_with_the_user(finance, closed_invoice, finance_user):
    invoice = _finalized(closed_invoice)
    before = audit_actions()

    confirm = run_action(finance, "invoice", "void_invoices", [invoice.pk])
    assert confirm.status_code == 200
    assert confirm.templates[0].name == "admin/invoicing/void_invoices.html"
    page = confirm.content.decode()
    assert "INV-2026-000001" in page and "$29.15" in page and 'name="reason"' in page

    second_step = {
        "action": "void_invoices",
        "_selected_action": [str(invoice.pk)],
        "post": "yes",
    }
    empty = finance.post(admin_url("invoice"), {**second_step, "reason": "   "})
    assert empty.status_code == 200
    assert empty.context["form"].errors == {"reason": ["This field is required."]}
    invoice.refresh_from_db()
    assert (invoice.status, invoice.void_reason, invoice.voided_at) == ("finalized", "", None)
    assert audit_actions() == before

    with time_machine.travel(CLOSE_AT + H, tick=False):
        done = finance.post(
            admin_url("invoice"),
            {**second_step, "reason": "Billed on the wrong account"},
            follow=True,
        )
    assert done.redirect_chain == [(admin_url("invoice"), 302)]
    invoice.refresh_from_db()
    assert (invoice.status, invoice.void_reason, invoice.voided_at) == (
        "void",
        "Billed on the wrong account",
        CLOSE_AT + H,
    )
    assert invoice.number == "INV-2026-000001"
    assert messages_of(done) == [(messages.SUCCESS, "Now void: INV-2026-000001")]
    entry = AuditEntry.objects.get(action="invoice.void")
    assert (entry.actor, entry.actor_id) == ("fran", finance_user.pk)
    assert (entry.data["reason"], entry.data["from"]) == (
        "Billed on the wrong account",
        "finalized",
    )


def test_mark_paid_and_uncollectible(finance, closed_invoice, finance_user):
    invoice = _finalized(closed_invoice)
    with time_machine.travel(CLOSE_AT + H, tick=False):
        run_action(finance, "invoice", "mark_uncollectible", [invoice.pk])
        invoice.refresh_from_db()
        assert invoice.status == "uncollectible"
        response = run_action(finance, "invoice", "mark_paid", [invoice.pk])
    invoice.refresh_from_db()
    assert (invoice.status, invoice.paid_at) == ("paid", CLOSE_AT + H)
    assert messages_of(response) == [(messages.SUCCESS, "Now paid: INV-2026-000001")]
    transitions = AuditEntry.objects.filter(action__in=["invoice.uncollectible", "invoice.paid"])
    assert list(transitions.order_by("id").values_list("action", "actor", "actor_id")) == [
        ("invoice.uncollectible", "fran", finance_user.pk),
        ("invoice.paid", "fran", finance_user.pk),
    ]


def test_transitions_not_allowed_show_an_error_and_change_nothing(finance, closed_invoice):
    draft = closed_invoice
    before = audit_actions()
    paid = run_action(finance, "invoice", "mark_paid", [draft.pk])
    assert messages_of(paid) == [
        (messages.ERROR, f"invoice draft #{draft.pk} is draft; cannot become paid")
    ]
    voided = finance.post(
        admin_url("invoice"),
        {
            "action": "void_invoices",
            "_selected_action": [str(draft.pk)],
            "post": "yes",
            "reason": "mistake",
        },
        follow=True,
    )
    assert messages_of(voided) == [
        (messages.ERROR, f"invoice draft #{draft.pk} is draft; cannot become void")
    ]
    draft.refresh_from_db()
    assert (draft.status, draft.number, draft.paid_at, draft.voided_at) == (
        "draft",
        None,
        None,
        None,
    )
    assert audit_actions() == before


def test_actions_need_the_change_permission(closed_invoice, settings):
    settings.BILLING_ADMIN_GROUPS = ["Finance", "Auditors"]  # a read-only back-office group
    viewer = User.objects.create_user("vic", is_staff=True)
    viewer.groups.add(Group.objects.create(name="Auditors"))
    viewer.user_permissions.add(
        *Group.objects.get(name="Finance").permissions.filter(codename__startswith="view_")
    )
    client = Client()
    client.force_login(viewer)
    response = run_action(client, "invoice", "mark_paid", [closed_invoice.pk])
    assert response.status_code == 200  # the list again: the action is not offered
    assert "mark_paid" not in response.content.decode()
    closed_invoice.refresh_from_db()
    assert closed_invoice.status == "draft"


# --- The invoice document -------------------------------------------------------------------


def test_document_page_shows_number_amounts_and_tiers(finance, closed_invoice, subscribed):
    subscribed.timezone = "America/New_York"
    subscribed.emails = ["ap@acme.example", "cfo@acme.example"]
    subscribed.save()
    invoice = _finalized(closed_invoice)
    url = reverse("admin:invoicing_invoice_document", args=[invoice.pk])

    response = finance.get(url)

    assert response.status_code == 200
    assert response["Content-Security-Policy"] == "default-src 'none'; style-src 'unsafe-inline'"
    html = " ".join(response.content.decode().split())  # one space between words
    assert "<title>Invoice INV-2026-000001 &middot; Acme Corp</title>" in html
    assert '<span class="status status-finalized">Finalized</span>' in html
    assert "2026-11-02 05:00 to 2026-11-02 06:00 (America/New_York)" in html
    assert "2026-11-02 10:00 to 2026-11-02 11:00 (UTC)" in html
    assert "Customer ID: acme" in html
    assert "<div>ap@acme.example</div><div>cfo@acme.example</div>" in html
    for amount in ("$5.00", "$0.15", "$24.00"):
        assert f'<td class="num">{amount}</td>' in html
    assert '<td colspan="5">Total</td> <td class="num">$29.15</td>' in html
    # graduated: the tiers applied, in exact major units
    assert (
        '<td class="num">1,500,000.5 tokens</td> <td class="pricing">Graduated tiers: '
        "1,000,000 tokens at $0.00002 (tier 1), 400,000.5 tokens at $0.00001 (tier 2); "
        "first 100,000 tokens included</td>"
    ) in html
    # per unit, and the package model with its minimum
    assert '<td class="num">3 tasks</td> <td class="pricing">$0.05 per task</td>' in html
    assert (
        '<td class="pricing">$1.50 per 60 minutes, rounded up: 2 packages; '
        "minimum $5.00 applied</td>"
    ) in html
    # self-contained, no admin links: a portal can serve the same page
    for outside in ("<script", "<link", "src=", "/admin/", "http://", "https://"):
        assert outside not in html
    assert "@media print" in html


@override_settings(**GRACE)
def test_document_marks_drafts_and_adjustment_lines(finance, closed_invoice, record):
    late = {
        "event_id": "late-1",
        "customer_id": "acme",
        "meter": "llm_tokens",
        "quantity": "200000",
        "timestamp": (T0 + timedelta(minutes=50)).isoformat(),
    }
    record([late], now=T0 + H + timedelta(minutes=30))
    closing.close_due_periods(now=T0 + 2 * H + timedelta(minutes=10))
    second = Invoice.objects.get(period__start=T0 + H)

    html = " ".join(
        finance.get(admin_url("invoice", "document", second.pk)).content.decode().split()
    )

    assert "<title>Invoice DRAFT &middot; Acme Corp</title>" in html
    assert '<div class="number">DRAFT</div>' in html
    assert html.count('<tr class="line-adjustment">') == 1
    assert html.count('<tr class="line-usage">') == 3
    assert '<span class="kind">Prior-period adjustment</span>' in html
    assert '<td class="num">200,000 tokens</td>' in html and '<td class="num">$2.00</td>' in html
    assert '<td colspan="5">Total</td> <td class="num">$7.00</td>' in html


def test_document_needs_staff_and_view_permission(closed_invoice, settings):
    url = admin_url("invoice", "document", closed_invoice.pk)
    assert Client().get(url).status_code == 302  # to the admin login
    staff = User.objects.create_user("sam", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get(url).status_code == 302  # staff outside the back-office groups: the login
    settings.BILLING_ADMIN_GROUPS = ["Finance", "Support"]
    staff.groups.add(Group.objects.create(name="Support"))  # in the admin, no invoice permission
    assert client.get(url).status_code == 403
    finance = User.objects.create_user("fin2", is_staff=True)
    finance.groups.add(Group.objects.get(name="Finance"))
    client.force_login(finance)
    assert client.get(admin_url("invoice", "document", 999999)).status_code == 404


# --- Plans and prices -----------------------------------------------------------------------


def test_plan_used_by_a_period_is_read_only(finance, subscribed, hourly_plan):
    page = finance.get(admin_url("priceplan", "change", hourly_plan.pk)).content.decode()
    assert "Used by billing periods: read-only" in page
    assert 'name="name"' not in page and 'name="prices-0-meter"' not in page
    assert 'name="_save"' not in page
    response = finance.post(
        admin_url("priceplan", "change", hourly_plan.pk), {"name": "Changed", "interval": "day"}
    )
    assert response.status_code == 403
    hourly_plan.refresh_from_db()
    assert (hourly_plan.name, hourly_plan.interval) == ("Pro", "hour")

    price = hourly_plan.prices.get(meter__code="llm_tokens")
    price_page = finance.get(admin_url("price", "change", price.pk)).content.decode()
    assert 'name="tiers-0-up_to"' not in price_page and 'name="model"' not in price_page
    assert finance.post(admin_url("price", "change", price.pk), {}).status_code == 403
    assert finance.post(admin_url("price", "delete", price.pk), {"post": "yes"}).status_code == 403
    assert Price.objects.filter(pk=price.pk).exists()


def test_copy_as_new_version_creates_version_2_with_identical_prices(
    finance, subscribed, hourly_plan, finance_user
):
    response = run_action(finance, "priceplan", "copy_as_new_version", [hourly_plan.pk])

    assert response.redirect_chain == [(admin_url("priceplan"), 302)]
    copy = PricePlan.objects.get(code="pro", version=2)
    assert (copy.name, copy.currency, copy.interval) == ("Pro", "USD", "hour")

    def prices_of(plan):
        prices = plan.prices.select_related("meter").prefetch_related("tiers")
        return {price.meter.code: price_spec(price) for price in prices}

    assert prices_of(copy) == prices_of(hourly_plan)
    assert len(prices_of(copy)) == 3
    assert messages_of(response) == [
        (
            messages.SUCCESS,
            "Created Pro (pro v2) from version 1. Its subscribers move to it from their next "
            "period; edit its prices before then.",
        )
    ]
    entry = AuditEntry.objects.get(action="plan.version_created", object_id=str(copy.pk))
    assert (entry.actor, entry.actor_id, entry.data) == (
        "fran",
        finance_user.pk,
        {"code": "pro", "version": 2, "subscriptions_moved": 1},
    )
    # the subscriber moves from its next period; the running period keeps version 1
    assert Subscription.objects.get().plan == copy
    assert BillingPeriod.objects.get().plan == hourly_plan
    # the copy is not used by a period yet, so it can still be edited
    page = finance.get(admin_url("priceplan", "change", copy.pk)).content.decode()
    assert 'name="name"' in page and 'name="prices-0-meter"' in page


def test_copy_refuses_two_versions_of_one_code(finance, hourly_plan):
    v2 = plans.create_plan_version(
        code="pro", name="Pro", currency="USD", interval="hour", prices=[]
    )
    response = run_action(finance, "priceplan", "copy_as_new_version", [hourly_plan.pk, v2.pk])
    assert messages_of(response) == [
        (
            messages.ERROR,
            "Select one version per plan code: each copy becomes the newest version.",
        )
    ]
    assert PricePlan.objects.filter(code="pro").count() == 2


def _price_post(plan, meter, tiers, **fields):
    data = {
        "plan": str(plan.pk),
        "meter": str(meter.pk),
        "model": "graduated",
        "unit_amount_minor": "",
        "package_size": "",
        "package_amount_minor": "",
        "included_quantity": "0",
        "minimum_minor": "0",
        "tiers-TOTAL_FORMS": str(len(tiers)),
        "tiers-INITIAL_FORMS": "0",
        "tiers-MIN_NUM_FORMS": "0",
        "tiers-MAX_NUM_FORMS": "1000",
        **fields,
    }
    for index, (up_to, unit_amount) in enumerate(tiers):
        data[f"tiers-{index}-position"] = str(index + 1)
        data[f"tiers-{index}-up_to"] = up_to
        data[f"tiers-{index}-unit_amount_minor"] = unit_amount
        data[f"tiers-{index}-flat_amount_minor"] = "0"
    return data


def test_an_unratable_price_shows_the_error_and_saves_nothing(finance, meters, finance_user):
    plan = plans.create_plan_version(
        code="lite", name="Lite", currency="USD", interval="month", prices=[]
    )
    tokens = meters["llm_tokens"]
    before = audit_actions()

    response = finance.post(
        admin_url("price", "add"), _price_post(plan, tokens, [("1000000", "0.002")])
    )

    assert response.status_code == 200
    formset = response.context["inline_admin_formsets"][0].formset
    assert formset.non_form_errors() == ["tiers[0].up_to must be empty: the last tier is open"]
    assert "tiers[0].up_to must be empty: the last tier is open" in response.content.decode()
    assert Price.objects.count() == 0 and PriceTier.objects.count() == 0
    assert audit_actions() == before

    saved = finance.post(
        admin_url("price", "add"),
        _price_post(plan, tokens, [("1000000", "0.002"), ("", "0.001")]),
    )
    assert saved.status_code == 302
    price = Price.objects.get(plan=plan)
    assert price_spec(price).tiers[1].up_to is None
    entry = AuditEntry.objects.get(action="admin.price_added")
    assert (entry.actor, entry.actor_id, entry.object_id) == (
        "fran",
        finance_user.pk,
        str(price.pk),
    )


def test_a_tiered_price_needs_its_tiers_in_the_plan_page(finance, meters):
    plan = plans.create_plan_version(
        code="lite", name="Lite", currency="USD", interval="month", prices=[]
    )
    data = {
        "name": "Lite",
        "interval": "month",
        "currency": "USD",
        "prices-TOTAL_FORMS": "1",
        "prices-INITIAL_FORMS": "0",
        "prices-MIN_NUM_FORMS": "0",
        "prices-MAX_NUM_FORMS": "1000",
        "prices-0-meter": str(meters["llm_tokens"].pk),
        "prices-0-model": "volume",
        "prices-0-included_quantity": "0",
        "prices-0-minimum_minor": "0",
    }
    response = finance.post(admin_url("priceplan", "change", plan.pk), data)
    assert response.status_code == 200
    errors = response.context["inline_admin_formsets"][0].formset.errors
    assert errors == [
        {
            "__all__": [
                "tiers must contain at least one tier",
                "add graduated and volume prices from the Price page, with tiers",
            ]
        }
    ]
    assert Price.objects.count() == 0

    data.update({"prices-0-model": "per_unit", "prices-0-unit_amount_minor": "-1"})
    negative = finance.post(admin_url("priceplan", "change", plan.pk), data)
    assert negative.context["inline_admin_formsets"][0].formset.errors == [
        {"__all__": ["unit_amount_minor must be >= 0; got -1"]}
    ]
    data["prices-0-unit_amount_minor"] = "0.5"
    assert finance.post(admin_url("priceplan", "change", plan.pk), data).status_code == 302
    assert price_spec(Price.objects.get()).unit_amount_minor == Decimal("0.5")
    assert AuditEntry.objects.get(action="admin.priceplan_changed").data["changes"] == [
        {"added": {"name": "price", "object": "lite v1: llm_tokens (per_unit)"}}
    ]


# --- Subscriptions --------------------------------------------------------------------------


def test_subscription_admin_goes_through_the_service(finance, hourly_plan, finance_user):
    customer = CustomerFactory(external_id="initech", currency="USD")
    with time_machine.travel(T0 + timedelta(minutes=30), tick=False):
        response = finance.post(
            admin_url("subscription", "add"),
            {"customer": str(customer.pk), "plan": str(hourly_plan.pk)},
        )
    assert response.status_code == 302
    subscription = Subscription.objects.get(customer=customer)
    assert (subscription.anchor, subscription.started_at) == (T0, T0 + timedelta(minutes=30))
    period = BillingPeriod.objects.get(customer=customer)
    assert (period.start, period.end, period.plan, period.status) == (
        T0,
        T0 + H,
        hourly_plan,
        "open",
    )
    created = AuditEntry.objects.get(action="subscription.created")
    assert (created.actor, created.actor_id, created.customer_external_id) == (
        "fran",
        finance_user.pk,
        "initech",
    )

    other = plans.create_plan_version(
        code="basic", name="Basic", currency="USD", interval="hour", prices=[]
    )
    with time_machine.travel(T0 + timedelta(minutes=40), tick=False):
        changed = finance.post(
            admin_url("subscription", "change", subscription.pk), {"plan": str(other.pk)}
        )
    assert changed.status_code == 302
    subscription.refresh_from_db()
    assert subscription.plan == other and subscription.started_at == T0 + timedelta(minutes=30)
    period.refresh_from_db()
    assert period.plan == hourly_plan  # the running period keeps its plan
    entry = AuditEntry.objects.get(action="subscription.plan_changed")
    assert (entry.actor, entry.data) == ("fran", {"plan": "basic", "version": 1})


def test_subscription_currency_mismatch_is_a_form_error(finance, hourly_plan):
    customer = CustomerFactory(external_id="euroco", currency="EUR")
    response = finance.post(
        admin_url("subscription", "add"),
        {"customer": str(customer.pk), "plan": str(hourly_plan.pk)},
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "plan": ["Pro (pro v1) bills in USD but the customer pays in EUR"]
    }
    assert Subscription.objects.count() == 0 and BillingPeriod.objects.count() == 0
    assert not AuditEntry.objects.filter(action__startswith="subscription.").exists()


def test_invoice_lines_are_shown_read_only(finance, closed_invoice):
    page = finance.get(admin_url("invoice", "change", closed_invoice.pk)).content.decode()
    assert InvoiceLine.objects.filter(invoice=closed_invoice).count() == 3
    assert "$24.00" in page and "View document" in page
    assert 'name="lines-0-description"' not in page and 'name="lines-0-quantity"' not in page


def test_a_new_plan_is_added_as_version_1_and_an_existing_code_is_refused(
    finance, hourly_plan, finance_user
):
    form = {
        "code": "pro",
        "name": "Pro again",
        "currency": "USD",
        "interval": "month",
        "prices-TOTAL_FORMS": "0",
        "prices-INITIAL_FORMS": "0",
        "prices-MIN_NUM_FORMS": "0",
        "prices-MAX_NUM_FORMS": "1000",
    }
    refused = finance.post(admin_url("priceplan", "add"), form)
    assert refused.status_code == 200
    assert refused.context["adminform"].form.errors["code"] == [
        "Plan pro exists already. To change it, use “Copy as new version” on its latest "
        "version in the list: subscribers move to a new version from their next period."
    ]
    assert PricePlan.objects.count() == 1

    added = finance.post(admin_url("priceplan", "add"), {**form, "code": "lite", "name": "Lite"})
    assert added.status_code == 302
    lite = PricePlan.objects.get(code="lite")
    assert (lite.version, lite.name, lite.interval) == (1, "Lite", "month")
    entry = AuditEntry.objects.get(action="admin.priceplan_added")
    assert (entry.actor, entry.actor_id, entry.object_id) == ("fran", finance_user.pk, str(lite.pk))


# --- Document formatting --------------------------------------------------------------------


def test_unit_prices_and_quantities_are_formatted_exactly():
    assert format_unit_amount(Decimal("5"), "USD") == "$0.05"
    assert format_unit_amount(Decimal("0.002"), "USD") == "$0.00002"
    assert format_unit_amount(Decimal("0.000000000001"), "USD") == "$0.00000000000001"
    assert format_unit_amount(Decimal("123456"), "USD") == "$1,234.56"
    assert format_unit_amount(Decimal("0.5"), "JPY") == "¥0.5"
    assert format_unit_amount(Decimal("1500"), "KWD") == "KD 1.500"
    assert format_quantity(Decimal("1500000.500000"), "token") == "1,500,000.5 tokens"
    assert format_quantity(Decimal("1.000000"), "minute") == "1 minute"
    assert format_quantity(Decimal("0"), "GB") == "0 GB"
    assert format_quantity(Decimal("2"), "") == "2"


def test_cap_credit_and_volume_lines_in_the_document(closed_invoice):
    InvoiceLine.objects.create(
        invoice=closed_invoice,
        position=4,
        kind=InvoiceLine.Kind.CAP_CREDIT,
        description="Budget cap credit (this period): usage beyond the cap is not charged",
        quantity=Decimal(0),
        amount_minor=-915,
        pricing={"cap_minor": 2000, "uncapped_minor": 2915},
    )
    tokens = closed_invoice.lines.get(meter__code="llm_tokens")
    tokens.pricing = {
        "model": "volume",
        "included_quantity": "0",
        "minimum_minor": 0,
        "unit_amount_minor": None,
        "package_size": None,
        "package_amount_minor": None,
        "billable_quantity": "1500000.5",
        "minimum_applied": False,
        "portions": [
            {
                "tier": 2,
                "quantity": "1500000.5",
                "unit_amount_minor": "0.0016",
                "flat_amount_minor": 100,
                "packages": None,
            }
        ],
    }
    tokens.save()
    closed_invoice.refresh_from_db()

    html = " ".join(render_invoice_document(closed_invoice).split())

    assert html.count('<tr class="line-cap_credit">') == 1
    assert '<span class="kind">Budget cap credit</span>' in html
    assert (
        '<td class="pricing">Budget cap $20.00; usage rated at $29.15 before the cap</td> '
        '<td class="num">-$9.15</td>'
    ) in html
    assert (
        '<td class="pricing">Volume tiers: 1,500,000.5 tokens at $0.000016 plus $1.00 flat '
        "(tier 2)</td>"
    ) in html
