"""Portal pages: the dashboard says what the usage API says, the CSV export, the budget form in
exact minor units, acknowledging a pause, password reset by e-mail, and sign-in rules."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.models import AuditEntry
from budgets import services as budget_services
from budgets.models import BudgetCap, BudgetPeriodState
from invoicing.demo import DEMO_PRICES
from invoicing.models import BillingPeriod, Invoice
from invoicing.pricing import plan_price_specs
from invoicing.rating import rate
from invoicing.services import closing, plans, subscriptions
from metering.currencies import format_minor
from metering.models import Customer, UsageEvent
from portal import charts, forms, selectors
from portal.views import hosted_invoice_url
from tests.factories import MeterFactory
from tests.portal.conftest import (
    PASSWORD,
    build_history,
    make_portal_customer,
    record,
    subscribe,
)

pytestmark = pytest.mark.django_db
HEADER = "event_id,customer_id,meter,quantity,timestamp,properties"


@pytest.fixture
def acme_history(acme, service_key):
    invoice = build_history(acme, service_key[0])
    return acme, invoice


def csv_rows(response) -> list[list[str]]:
    body = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(body)))


# --- Dashboard ---------------------------------------------------------------------------


def test_dashboard_numbers_equal_the_usage_api(acme_history, client, api):
    acme, _ = acme_history
    client.force_login(acme.user)
    page = client.get("/portal/")
    assert page.status_code == 200
    api_body = api.get("/api/v1/customers/acme/usage").json()

    usage = page.context["usage"]
    shown = [(line.meter.code, line.quantity, line.amount_minor) for line in usage.lines]
    from_api = [
        (line["meter"], Decimal(line["quantity"]), line["amount_minor"])
        for line in api_body["lines"]
    ]
    assert shown == from_api
    # 4 tasks x 5 = 20; tokens 1,501,250.5 - 100,000 included: 2000 + 401.2505 -> 2401;
    # minutes 73.25: 2 packages x 150 = 300, raised to the 500 minimum
    assert from_api == [
        ("agent_minutes", Decimal("73.25"), 500),
        ("agent_tasks", Decimal("4"), 20),
        ("llm_tokens", Decimal("1501250.5"), 2401),
    ]
    assert usage.total_minor == api_body["total_minor"] == 2921
    assert usage.period.start == datetime.fromisoformat(api_body["period_start"])
    html = page.content.decode()
    for meter, quantity, amount in from_api:
        row = re.search(rf'<tr data-meter="{meter}"[^>]*>', html).group(0)
        assert f'data-amount-minor="{amount}"' in row
        assert Decimal(re.search(r'data-quantity="([^"]+)"', row).group(1)) == quantity
    assert format_minor(2921, "USD") in html  # "$29.21"
    assert 'data-total-minor="2921"' in html


def test_projection_rates_the_extrapolated_quantity_with_the_rating_engine(acme_history):
    acme, _ = acme_history
    now = timezone.now()
    usage = selectors.current_usage(customer=acme.customer, now=now)
    period = usage.period
    specs = plan_price_specs(period.plan)
    fraction = Decimal((now - period.start) // timedelta(microseconds=1)) / Decimal(
        (period.end - period.start) // timedelta(microseconds=1)
    )
    for line in usage.lines:
        expected_q = (line.quantity / fraction).quantize(Decimal("0.000001"))
        assert abs(line.projected_quantity - expected_q) <= Decimal("0.000001")
        assert line.projected_amount_minor == rate(specs[line.meter.pk], line.projected_quantity)
    assert usage.projected_total_minor >= usage.total_minor


def test_project_quantity_is_linear_and_leaves_gauges_alone():
    period = BillingPeriod(
        start=datetime(2026, 11, 1, tzinfo=UTC), end=datetime(2026, 11, 11, tzinfo=UTC)
    )
    now = datetime(2026, 11, 3, 12, tzinfo=UTC)  # a quarter of the period
    assert selectors.project_quantity(
        Decimal("3"), aggregation="count", period=period, now=now
    ) == Decimal("12")
    assert selectors.project_quantity(
        Decimal("0.000001"), aggregation="sum", period=period, now=now
    ) == Decimal("0.000004")
    assert selectors.project_quantity(
        Decimal("7"), aggregation="max", period=period, now=now
    ) == Decimal("7")
    # before the period starts and after it ends: the quantity as it stands
    at_start = period.start
    assert selectors.project_quantity(
        Decimal("5"), aggregation="sum", period=period, now=at_start
    ) == Decimal("5")


def test_chart_counts_per_local_day_and_breakdown_by_property(acme, service_key, client):
    """Events either side of midnight in New York fall on their local days."""
    subscribe(acme, since=timezone.now() - timedelta(days=1))
    now = timezone.now()
    zone = selectors.customer_zone(acme.customer)
    today = now.astimezone(zone).date()
    midnight = selectors.local_midnight(today, zone)
    before, after = midnight - timedelta(minutes=1), midnight + timedelta(seconds=1)
    events = [
        ("d1", "agent_tasks", None, before, {"agent_id": "alpha"}),
        ("d2", "agent_tasks", None, before, {"agent_id": "beta"}),
        ("d3", "llm_tokens", 1000, before, {"agent_id": "alpha"}),
    ]
    if after < now:
        events += [
            ("d4", "agent_tasks", None, after, {"agent_id": "alpha"}),
            ("d5", "llm_tokens", "2.5", after, {"agent_id": "alpha"}),
        ]
    record(service_key[0], acme.customer, events, now=now)
    series = {
        s.meter.code: dict(s.days)
        for s in selectors.daily_usage(customer=acme.customer, days=7, now=now)
    }
    yesterday = today - timedelta(days=1)
    assert series["agent_tasks"][yesterday] == 2
    assert series["llm_tokens"][yesterday] == Decimal(1000)
    assert series["agent_tasks"][today] == (1 if after < now else 0)
    assert len(series["agent_tasks"]) == 7

    client.force_login(acme.user)
    page = client.get("/portal/?days=7")
    html = page.content.decode()
    assert html.count('<rect class="bar"') >= 2
    assert 'role="img"' in html and "<title>" in html
    assert page.context["days"] == 7

    period = acme.period
    breakdown = selectors.property_breakdown(customer=acme.customer, period=period, prop="agent_id")
    by_value = {row.value: row for row in breakdown.rows}
    tasks = breakdown.meters[0] if breakdown.meters[0].code == "agent_tasks" else None
    assert tasks is not None
    in_period = [e for e in events if period.start <= e[3] < period.end]
    alpha_tasks = sum(1 for e in in_period if e[1] == "agent_tasks" and e[4]["agent_id"] == "alpha")
    assert by_value["alpha"].quantities.get(tasks.pk, Decimal(0)) == alpha_tasks


def test_levels_chart_their_peak_and_unique_meters_their_distinct_values(acme, service_key):
    """Per local day and per property value: a max meter its largest quantity, a latest meter
    its peak too (CHARTED_AS), a unique_count meter its distinct values."""
    MeterFactory(code="level", aggregation="latest")
    MeterFactory(code="seats", aggregation="max")
    MeterFactory(code="agents", aggregation="unique_count", unique_property="agent_id")
    now = timezone.now()
    zone = selectors.customer_zone(acme.customer)
    today = now.astimezone(zone).date()
    yesterday = today - timedelta(days=1)
    noon = selectors.local_midnight(yesterday, zone) + timedelta(hours=12)
    alpha, beta = {"agent_id": "alpha"}, {"agent_id": "beta"}
    record(
        service_key[0],
        acme.customer,
        [
            ("l1", "level", 5, noon, alpha),
            ("l2", "level", 9, noon + timedelta(hours=1), alpha),
            ("l3", "level", 2, noon + timedelta(hours=2), beta),  # the latest, not the peak
            ("s1", "seats", 3, noon, alpha),
            ("s2", "seats", 7, noon + timedelta(hours=1), beta),
            ("u1", "agents", 1, noon, alpha),
            ("u2", "agents", 1, noon + timedelta(hours=1), alpha),
            ("u3", "agents", 1, noon + timedelta(hours=2), beta),
        ],
        now=now,
    )
    series = {
        s.meter.code: dict(s.days)
        for s in selectors.daily_usage(customer=acme.customer, days=2, now=now)
    }
    assert series["level"] == {yesterday: Decimal(9), today: Decimal(0)}
    assert series["seats"] == {yesterday: Decimal(7), today: Decimal(0)}
    assert series["agents"] == {yesterday: Decimal(2), today: Decimal(0)}

    window = BillingPeriod(start=noon - timedelta(hours=1), end=noon + timedelta(hours=3))
    breakdown = selectors.property_breakdown(customer=acme.customer, period=window, prop="agent_id")
    codes = {meter.pk: meter.code for meter in breakdown.meters}
    by_value = {
        row.value: {codes[pk]: quantity for pk, quantity in row.quantities.items()}
        for row in breakdown.rows
    }
    assert by_value == {
        "alpha": {"level": Decimal(9), "seats": Decimal(3), "agents": Decimal(1)},
        "beta": {"level": Decimal(2), "seats": Decimal(7), "agents": Decimal(1)},
    }


def test_dashboard_options_fall_back_on_bad_input(acme_history, client):
    acme, _ = acme_history
    client.force_login(acme.user)
    page = client.get("/portal/?days=12&property=bad%20name;drop")
    assert page.status_code == 200
    assert page.context["days"] == 30
    assert page.context["property"] == "agent_id"
    assert "A property name has" in page.content.decode()
    panel = client.get("/portal/breakdown/?property=bad%20name;drop&fragment=1")
    assert panel.status_code == 200
    assert panel.context["breakdown"].property == "agent_id"
    assert "A property name has" in panel.content.decode()
    model = client.get("/portal/breakdown/?property=model").context["breakdown"]
    assert {row.value: row.events for row in model.rows} == {"m1": 3, "m2": 2, None: 4}


@pytest.mark.parametrize("name", ["5", "-5", "5_0", "9" * 40, "-" + "9" * 40])
def test_a_numeric_property_name_falls_back_like_any_bad_name(acme_history, client, name):
    """Django reads a JSON key that int() accepts as an array index (40 digits overflowed
    PostgreSQL's integer: a 500): such names are refused and the breakdown is by agent_id."""
    acme, _ = acme_history
    client.force_login(acme.user)

    panel = client.get(f"/portal/breakdown/?property={name}&fragment=1")

    assert panel.status_code == 200
    assert panel.context["breakdown"].property == "agent_id"
    assert "and is not a number." in panel.content.decode()
    assert not selectors.is_property_name(name)
    with pytest.raises(ValueError, match="not a property name"):
        selectors.property_breakdown(customer=acme.customer, period=acme.period, prop=name)


@pytest.mark.parametrize("name", ["agent_id", "model", "gen_ai.usage", "a-1", "5a", "x:5"])
def test_property_names_with_a_letter_are_property_names(name):
    assert selectors.is_property_name(name)


def test_dashboard_reads_no_event_and_links_to_the_breakdown(acme_history, client):
    """The dashboard reads rollups only; the breakdown (which reads events) is a page of its
    own that the dashboard links to, and a fragment its script loads into the page."""
    acme, _ = acme_history
    client.force_login(acme.user)
    with CaptureQueriesContext(connection) as queries:
        page = client.get("/portal/?days=7&property=model")
    assert page.status_code == 200
    assert not [q["sql"] for q in queries if "metering_usageevent" in q["sql"]]
    html = page.content.decode()
    assert 'href="/portal/breakdown/?property=model&amp;days=7"' in html
    assert 'data-fragment="/portal/breakdown/?property=model&amp;days=7&amp;fragment=1"' in html
    assert '<script src="/static/portal/breakdown.js" defer></script>' in html
    assert 'id="breakdown"' not in html  # the table itself is not computed here

    full = client.get("/portal/breakdown/?property=model&days=7")
    assert full.status_code == 200
    body = full.content.decode()
    assert body.startswith("<!doctype html>") and 'id="breakdown"' in body
    assert 'href="/portal/?days=7&amp;property=model"' in body  # back to the dashboard
    fragment = client.get("/portal/breakdown/?property=model&days=7&fragment=1")
    text = fragment.content.decode().strip()
    assert text.startswith('<section class="card"') and text.endswith("</section>")
    assert 'id="breakdown-panel"' in text and 'id="breakdown"' in text
    assert {row.value: row.events for row in fragment.context["breakdown"].rows} == {
        "m1": 3,
        "m2": 2,
        None: 4,
    }


def test_breakdown_without_a_plan_says_so(acme, client):
    client.force_login(acme.user)
    fragment = client.get("/portal/breakdown/?fragment=1")
    assert fragment.status_code == 200
    assert fragment.context["breakdown"] is None
    assert "no price plan yet" in fragment.content.decode()


def test_property_names_come_from_each_meters_latest_events(acme_history):
    acme, _ = acme_history
    period = subscriptions.current_period(customer=acme.customer, now=timezone.now())
    names = selectors.property_names(customer=acme.customer, period=period)
    expected = {
        key
        for properties in UsageEvent.objects.filter(
            customer=acme.customer, timestamp__gte=period.start, timestamp__lt=period.end
        ).values_list("properties", flat=True)
        for key in properties
    }
    assert names == sorted(expected)


def test_nice_steps_and_compact_labels():
    assert charts.nice_step(Decimal(3), integer=True) == 1
    assert charts.nice_step(Decimal(1_500_000)) == Decimal(500_000)
    assert charts.compact(Decimal(1_500_000)) == "1.5M"
    assert charts.compact(Decimal(2500)) == "2.5k"
    assert charts.compact(Decimal("0.25")) == "0.25"


# --- Invoices ----------------------------------------------------------------------------


def test_invoice_pages_show_every_line_and_the_document(acme_history, client):
    acme, invoice = acme_history
    client.force_login(acme.user)
    listing = client.get("/portal/invoices/").content.decode()
    assert "Draft — summary, not yet charged" in listing
    detail = client.get(f"/portal/invoices/{invoice.pk}/")
    assert detail.status_code == 200
    kinds = [line.kind for line in detail.context["lines"]]
    assert kinds == [line.kind for line in invoice.lines.order_by("position")]
    assert format_minor(invoice.total_minor, "USD") in detail.content.decode()
    assert "Pay / view in Stripe" not in detail.content.decode()

    document = client.get(f"/portal/invoices/{invoice.pk}/document/")
    assert document.status_code == 200
    assert document["Content-Security-Policy"].startswith("default-src 'none'")
    assert b"<!doctype html>" in document.content.lower()
    download = client.get(f"/portal/invoices/{invoice.pk}/document/?download=1")
    assert (
        download["Content-Disposition"] == f'attachment; filename="invoice-draft-{invoice.pk}.html"'
    )


@override_settings(BILLING_GRACE_PERIOD=600, BILLING_REVIEW_PERIOD=1800)
def test_invoice_detail_sets_adjustments_and_cap_credits_apart(acme, service_key, client):
    """An hourly plan at a fixed hour: a cap credit on the first invoice, late usage of that
    hour as an adjustment line on the next."""
    t0 = datetime(2026, 11, 2, 10, tzinfo=UTC)
    minute = timedelta(minutes=1)
    plan = plans.create_plan_version(
        code="portal-hourly", name="Hourly", currency="USD", interval="hour", prices=DEMO_PRICES
    )
    subscriptions.subscribe_customer(customer=acme.customer, plan=plan, now=t0)
    budget_services.set_budget_cap(
        customer=acme.customer, cap_minor=1000, thresholds=[100], action="alert", now=t0 + minute
    )
    events = [
        ("h-t1", "agent_tasks", None, t0 + 5 * minute, {}),
        ("h-k1", "llm_tokens", 900_000, t0 + 5 * minute, {}),
    ]
    record(service_key[0], acme.customer, events, now=t0 + 20 * minute)
    closing.close_due_periods(now=t0 + 70 * minute)
    late = [("h-late", "agent_tasks", None, t0 + 30 * minute, {})]
    record(service_key[0], acme.customer, late, now=t0 + 80 * minute)
    closing.close_due_periods(now=t0 + 130 * minute)
    first, second = Invoice.objects.filter(customer=acme.customer).order_by("period__start")

    client.force_login(acme.user)
    page = client.get(f"/portal/invoices/{first.pk}/").content.decode()
    assert '<tr class="line-cap_credit" data-kind="cap_credit">' in page
    assert '<span class="kind">Budget cap credit</span>' in page
    assert format_minor(first.total_minor, "USD") in page and first.total_minor == 1000
    page = client.get(f"/portal/invoices/{second.pk}/").content.decode()
    assert '<tr class="line-adjustment" data-kind="adjustment">' in page
    assert '<span class="kind">Prior-period adjustment</span>' in page


def test_hosted_stripe_link_only_for_https(acme_history, client):
    acme, invoice = acme_history
    client.force_login(acme.user)
    type(invoice).objects.filter(pk=invoice.pk).update(
        stripe_hosted_invoice_url="https://invoice.stripe.com/i/acct_1/test_1"
    )
    page = client.get(f"/portal/invoices/{invoice.pk}/").content.decode()
    assert 'href="https://invoice.stripe.com/i/acct_1/test_1"' in page
    type(invoice).objects.filter(pk=invoice.pk).update(
        stripe_hosted_invoice_url="javascript:alert(1)"
    )
    assert (
        "Pay / view in Stripe" not in client.get(f"/portal/invoices/{invoice.pk}/").content.decode()
    )


# --- Export ------------------------------------------------------------------------------


def test_export_of_the_current_period_streams_every_event(acme_history, client):
    acme, _ = acme_history
    client.force_login(acme.user)
    period = acme.period
    response = client.get(f"/portal/export/?period={period.pk}")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="usage-acme-')
    rows = csv_rows(response)
    assert ",".join(rows[0]) == HEADER
    events = UsageEvent.objects.filter(
        customer=acme.customer, timestamp__gte=period.start, timestamp__lt=period.end
    )
    assert len(rows) - 1 == events.count() == 9
    first = rows[1]
    event = events.order_by("timestamp", "pk").first()
    assert first[0] == event.event_id and first[1] == "acme" and first[2] == "agent_tasks"
    assert first[3] == "1"
    assert first[4] == event.timestamp.astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert json.loads(first[5]) == event.properties
    tokens = next(row for row in rows if row[0] == "e-k2")
    assert tokens[3] == "600000.5"


def test_export_by_local_dates_and_bad_ranges(acme_history, client):
    acme, _ = acme_history
    client.force_login(acme.user)
    zone = selectors.customer_zone(acme.customer)
    today = timezone.now().astimezone(zone).date()
    start = today - timedelta(days=70)
    response = client.get(f"/portal/export/?start={start}&end={today}")
    rows = csv_rows(response)
    assert len(rows) - 1 == UsageEvent.objects.filter(customer=acme.customer).count() == 11

    form = client.get("/portal/export/")
    assert form.status_code == 200
    assert form.context["range_form"]["end"].value() == today
    bad = client.get(f"/portal/export/?start={today}&end={start}")
    assert (
        bad.status_code == 400 and "The last day is before the first day." in bad.content.decode()
    )
    assert client.get("/portal/export/?period=abc").status_code == 400


# --- Budget ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "typed", "minor"),
    [
        ("USD", "1234.56", 123456),
        ("USD", "12.5", 1250),
        ("USD", "1,000", 100000),
        ("JPY", "1500", 1500),
        ("KWD", "0.125", 125),
    ],
)
def test_budget_form_sets_the_cap_in_exact_minor_units(
    client, portal_meters, currency, typed, minor
):
    portal = make_portal_customer(f"cust-{currency.lower()}", currency=currency)
    client.force_login(portal.user)
    response = client.post(
        "/portal/budget/", {"cap": typed, "thresholds": "80, 50 100", "action": "pause"}
    )
    assert response.status_code == 302 and response["Location"] == "/portal/budget/"
    cap = BudgetCap.objects.get(customer=portal.customer)
    assert (cap.cap_minor, cap.thresholds, cap.action) == (minor, [50, 80, 100], "pause")
    page = client.get("/portal/budget/")
    assert "Budget saved." in page.content.decode()
    assert page.context["form"]["cap"].value() == forms.minor_to_major_text(minor, currency)
    assert format_minor(minor, currency) in page.content.decode()


@pytest.mark.parametrize(
    ("currency", "data", "field", "message"),
    [
        ("JPY", {"cap": "12.5"}, "cap", "JPY amounts are whole numbers"),
        ("USD", {"cap": "12.345"}, "cap", "USD amounts have at most 2 decimal places."),
        ("USD", {"cap": "-5"}, "cap", "Enter an amount such as 250.00."),
        ("USD", {"cap": "0"}, "cap", "The cap must be greater than zero."),
        ("USD", {"cap": "abc"}, "cap", "Enter an amount such as 250.00."),
        ("USD", {"cap": "NaN"}, "cap", "Enter an amount such as 250.00."),
        ("USD", {"cap": "1" * 30}, "cap", "The amount is too large."),
        ("USD", {"thresholds": "0, 150"}, "thresholds", "between 1 and 100"),
        ("USD", {"thresholds": "50, 50"}, "thresholds", "Each threshold may appear once."),
        ("USD", {"thresholds": ""}, "thresholds", "This field is required."),
        ("USD", {"action": "explode"}, "action", "Select a valid choice."),
    ],
)
def test_bad_budget_input_shows_errors_and_changes_nothing(
    client, portal_meters, currency, data, field, message
):
    portal = make_portal_customer(f"cust-{currency.lower()}", currency=currency)
    budget_services.set_budget_cap(
        customer=portal.customer,
        cap_minor=5000,
        thresholds=[50, 100],
        action="alert",
        now=timezone.now(),
    )
    audits = AuditEntry.objects.count()
    client.force_login(portal.user)
    response = client.post(
        "/portal/budget/", {"cap": "100", "thresholds": "50, 80", "action": "pause"} | data
    )
    assert response.status_code == 400
    assert message in " ".join(response.context["form"].errors[field])
    assert 'aria-invalid="true"' in response.content.decode()
    cap = BudgetCap.objects.get(customer=portal.customer)
    assert (cap.cap_minor, cap.thresholds, cap.action) == (5000, [50, 100], "alert")
    assert AuditEntry.objects.count() == audits


def test_empty_cap_removes_it(client, portal_meters):
    portal = make_portal_customer("nocap")
    client.force_login(portal.user)
    client.post("/portal/budget/", {"cap": "10", "thresholds": "50", "action": "alert"})
    client.post("/portal/budget/", {"cap": "", "thresholds": "50", "action": "alert"})
    assert BudgetCap.objects.get(customer=portal.customer).cap_minor is None


@pytest.fixture
def paused(acme_history):
    """acme paused at a cap below what it already spent this period."""
    acme, _ = acme_history
    status = budget_services.set_budget_cap(
        customer=acme.customer,
        cap_minor=1000,
        thresholds=[50, 100],
        action="pause",
        now=timezone.now(),
    )
    assert status.status == "paused"
    return acme


def test_acknowledge_resumes_a_paused_customer(paused, client):
    client.force_login(paused.user)
    page = client.get("/portal/budget/")
    assert 'data-budget-status="paused"' in page.content.decode()
    assert "Acknowledge and resume" in page.content.decode()

    response = client.post("/portal/budget/acknowledge/", follow=True)
    assert "Resumed: your agents may work" in response.content.decode()
    customer = Customer.objects.get(pk=paused.customer.pk)
    assert customer.status == "active"
    state = BudgetPeriodState.objects.get(customer=customer, period_start=paused.period.start)
    assert state.acknowledged_by == paused.user.username and state.status != "paused"
    assert (
        AuditEntry.objects.filter(action="budget.acknowledged", actor=paused.user.username).count()
        == 1
    )
    # a second press finds nothing paused and changes nothing
    again = client.post("/portal/budget/acknowledge/", follow=True)
    assert "Nothing is paused" in again.content.decode()
    assert AuditEntry.objects.filter(action="budget.acknowledged").count() == 1
    assert client.get("/portal/budget/acknowledge/").status_code == 405


def test_raising_the_cap_resumes_a_paused_customer(paused, client):
    client.force_login(paused.user)
    response = client.post(
        "/portal/budget/",
        {"cap": "100.00", "thresholds": "50, 100", "action": "pause"},
        follow=True,
    )
    assert "Budget saved. Your agents may work again." in response.content.decode()
    assert Customer.objects.get(pk=paused.customer.pk).status == "active"
    assert BudgetCap.objects.get(customer=paused.customer).cap_minor == 10000
    dashboard = client.get("/portal/").content.decode()
    assert 'data-budget-status="active"' in dashboard


def test_alert_history_lists_the_customers_alerts_newest_first(paused, client):
    client.force_login(paused.user)
    alerts = client.get("/portal/budget/").context["alerts"]
    assert [a.threshold for a in alerts] == [100, 50]  # crossed in order, shown newest first
    assert all(a.customer_id == paused.customer.pk for a in alerts)
    assert alerts == sorted(alerts, key=lambda a: (a.created_at, a.pk), reverse=True)


# --- Accounts ----------------------------------------------------------------------------


def test_login_and_logout(acme, client):
    page = client.get("/portal/login/")
    assert page.status_code == 200
    response = client.post("/portal/login/", {"username": "acme-user", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/portal/"
    assert client.get("/portal/").status_code == 200
    assert client.get("/portal/logout/").status_code == 405  # logout is a POST form
    response = client.post("/portal/logout/")
    assert response["Location"] == "/portal/login/"
    assert client.get("/portal/").status_code == 302


def test_staff_cannot_sign_in_to_the_portal(client, db):
    User.objects.create_user(username="staff", password=PASSWORD, is_staff=True)
    response = client.post("/portal/login/", {"username": "staff", "password": PASSWORD})
    assert response.status_code == 200
    assert "This account has no access to the customer portal." in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_password_reset_sends_a_working_link(acme, client, mailoutbox):
    response = client.post("/portal/password-reset/", {"email": acme.user.email})
    assert response.status_code == 302 and response["Location"] == "/portal/password-reset/sent/"
    assert len(mailoutbox) == 1
    message = mailoutbox[0]
    assert message.to == [acme.user.email]
    assert message.subject == "Reset your billing portal password"
    link = re.search(r"http://testserver(/portal/password-reset/\S+/\S+/)", message.body).group(1)

    confirm = client.get(link)
    assert confirm.status_code == 302  # Django swaps the token for a session value
    form_url = confirm["Location"]
    assert client.get(form_url).context["validlink"] is True
    done = client.post(
        form_url, {"new_password1": "a-new-secret-42", "new_password2": "a-new-secret-42"}
    )
    assert done.status_code == 302 and done["Location"] == "/portal/password-reset/complete/"
    client.logout()
    assert client.login(username=acme.user.username, password="a-new-secret-42")
    # the link works once
    client.logout()
    assert client.get(link, follow=True).context["validlink"] is False


def test_password_reset_sends_nothing_to_staff_or_strangers(client, db, mailoutbox):
    User.objects.create_user(
        username="staff", email="staff@operator.example", is_staff=True, password=PASSWORD
    )
    for email in ("staff@operator.example", "nobody@example.com"):
        response = client.post("/portal/password-reset/", {"email": email})
        assert response.status_code == 302
    assert mailoutbox == []


def testhosted_invoice_url_shown_only_when_https():
    url = "https://invoice.stripe.com/i/acct_1/test_1"
    assert hosted_invoice_url(SimpleNamespace(stripe_hosted_invoice_url=url)) == url
    script = SimpleNamespace(stripe_hosted_invoice_url="javascript:alert(1)")
    assert hosted_invoice_url(script) == ""
    assert hosted_invoice_url(SimpleNamespace(stripe_hosted_invoice_url=None)) == ""
    assert hosted_invoice_url(SimpleNamespace()) == ""  # no Stripe fields on the model


def test_dashboard_rates_the_period_once_with_a_budget(acme_history, client, monkeypatch):
    """The budget card's spend is the dashboard's own total: the budget read reuses it
    instead of rating the period a second time."""
    from invoicing import selectors as invoicing_selectors

    acme, _ = acme_history
    budget_services.set_budget_cap(
        customer=acme.customer,
        cap_minor=1_000_000,
        thresholds=[50, 80, 100],
        action="pause",
        now=timezone.now(),
    )
    client.force_login(acme.user)
    client.get("/portal/")  # warm: the plan's prices are kept per process
    calls = []
    original = invoicing_selectors.preview_period_usage

    def counted(**kwargs):
        calls.append(kwargs["period"].pk)
        return original(**kwargs)

    monkeypatch.setattr(invoicing_selectors, "preview_period_usage", counted)
    page = client.get("/portal/")
    assert page.status_code == 200
    assert len(calls) == 1
    usage, budget = page.context["usage"], page.context["budget"]["status"]
    assert budget.spent_minor == usage.total_minor == 2921
    assert budget.status == "active"


FAVICON_FILE = Path(__file__).resolve().parents[2] / "portal" / "static" / "portal" / "favicon.ico"


@pytest.mark.parametrize("method", ["get", "head"])
def test_the_site_icon_is_served_at_favicon_ico_without_a_login(client, method):
    response = getattr(client, method)("/favicon.ico")

    assert response.status_code == 200
    assert response["Content-Type"] == "image/x-icon"
    assert response["Cache-Control"] == "public, max-age=86400"
    if method == "get":
        assert response.content == FAVICON_FILE.read_bytes()
        assert response.content[:4] == b"\x00\x00\x01\x00"  # an ICO file, one image


def test_the_site_icon_refuses_writes(client):
    response = client.post("/favicon.ico")

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"
