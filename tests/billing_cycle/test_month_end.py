"""Month-end from the admin alone: the billing overview (the admin's front page) with figures
that open their filtered lists and revenue by month, "Run the billing cycle now", closing a
period early (audited, with a reason), and the month's CSV exports."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
import time_machine
from django.urls import reverse

from audit.models import AuditEntry
from invoicing.models import BillingPeriod, Invoice
from invoicing.services import closing, credit_notes, invoices
from invoicing.services.reconcile import reconcile
from tests.invoicing.backoffice import finance_client
from tests.invoicing.conftest import T0
from tests.invoicing.test_closing import ev, usage_events

pytestmark = pytest.mark.django_db
H = timedelta(hours=1)
M = timedelta(minutes=1)
NOW = T0 + 2 * H + 30 * M  # hours 1 and 2 closed, hour 3 running


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def month(clock, subscribed, record, settings):
    """acme (hourly plan): hour 1 finalized ($29.15, due in 30 days) with a $1.00 credit note;
    hour 2 a draft awaiting its summary; hour 3 running."""
    settings.BILLING_GRACE_PERIOD = 600
    settings.BILLING_REVIEW_PERIOD = 0
    subscribed.name = "=HYPERLINK(evil)"
    subscribed.save()
    record(usage_events(), now=T0 + 20 * M)
    closing.close_due_periods(now=T0 + 2 * H + 10 * M)
    first = Invoice.objects.get(period__start=T0)
    invoices.mark_summary_sent(invoice_id=first.pk, at=T0 + H + 10 * M)
    invoices.finalize_invoice(invoice_id=first.pk, now=T0 + 2 * H)
    credit_notes.issue_credit_note(
        invoice_id=first.pk,
        lines=[credit_notes.CreditLine(first.lines.get(meter__code="llm_tokens").pk, 100)],
        reason="-1 token bug",
        now=NOW,
    )
    return Invoice.objects.get(pk=first.pk)


def test_overview_is_the_admin_front_page_with_figures_that_open_their_lists(month):
    finance = finance_client()
    response = finance.get(reverse("admin:index"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Billing overview" in page
    assert "November 2026" in page and "October 2026" in page
    months = response.context["months"]
    november = {f["label"]: f for f in months[0]["periods"] + months[0]["invoices"]}
    assert november["Open (running)"]["count"] == 1
    assert november["Closed"]["count"] == 2
    assert november["Drafts awaiting their summary"]["count"] == 1
    assert november["Finalized, not yet due"]["count"] == 1
    assert november["Finalized, not yet due"]["amounts"] == ["$29.15"]
    assert november["Overdue"]["count"] == 0
    # each figure's link lists exactly what it counts
    for label, expected in [
        ("Closed", 2),
        ("Open (running)", 1),
        ("Drafts awaiting their summary", 1),
        ("Finalized, not yet due", 1),
        ("Paid", 0),
    ]:
        listing = finance.get(november[label]["url"])
        assert listing.status_code == 200, label
        assert listing.context["cl"].result_count == expected, label
    # what is stuck: each figure opens its list (an invalid filter would redirect with ?e=1)
    attention = {f["label"]: f for f in response.context["attention"]}
    assert attention["Unpriced usage awaiting a decision"]["count"] == 0
    assert attention["Paused customers"]["count"] == 0
    for figure in attention.values():
        assert finance.get(figure["url"]).status_code == 200, figure["label"]
    # revenue: invoiced less the credit note, nothing collected yet, all outstanding
    [usd] = response.context["revenue"]
    assert usd["currency"] == "USD"
    assert usd["rows"][0] == {
        "month": "November 2026",
        "invoiced": "$28.15",
        "collected": "$0.00",
        "outstanding": "$28.15",
    }
    assert '<figure class="chart" data-meter="revenue-usd">' in page
    # the app list is still there
    assert reverse("admin:invoicing_invoice_changelist") in page


def test_overdue_and_paid_move_between_figures(month, clock):
    clock.move_to(NOW + timedelta(days=31))
    finance = finance_client()
    months = finance.get(reverse("admin:index")).context["months"]
    [november] = [m for m in months if m["month"].key == "2026-11"]
    figures = {f["label"]: f for f in november["invoices"]}
    assert figures["Overdue"]["count"] == 1
    assert finance.get(figures["Overdue"]["url"]).context["cl"].result_count == 1
    invoices.mark_invoice_paid(invoice_id=month.pk, now=NOW + timedelta(days=31))
    response = finance.get(reverse("admin:index"))
    [november] = [m for m in response.context["months"] if m["month"].key == "2026-11"]
    figures = {f["label"]: f for f in november["invoices"]}
    assert (figures["Overdue"]["count"], figures["Paid"]["count"]) == (0, 1)
    december = response.context["revenue"][0]["rows"][0]
    assert december["month"] == "December 2026"
    assert december["collected"] == "$28.15"


def test_run_the_billing_cycle_now_reports_and_is_audited(month, clock):
    clock.move_to(T0 + 3 * H + 11 * M)  # hour 3 is due now
    finance = finance_client()
    refused = finance.post(reverse("billing-run-cycle"), {"username": "x"}, follow=True)
    assert [str(m) for m in refused.context["messages"]] == [
        "Nothing was run: use “Run the billing cycle now”."
    ]
    assert not AuditEntry.objects.filter(action="admin.billing_cycle_run").exists()
    response = finance.post(reverse("billing-run-cycle"), {"run": "now"}, follow=True)
    texts = [str(m) for m in response.context["messages"]]
    assert any(t.startswith("Did ") and "closed into draft" in t for t in texts), texts
    assert any(t.startswith("Waiting") for t in texts), texts  # hour 2's summary, say
    entry = AuditEntry.objects.get(action="admin.billing_cycle_run")
    assert entry.actor == "fiona"
    assert entry.data["closed"] == 1
    assert BillingPeriod.objects.get(start=T0 + 2 * H).status == "closed"
    assert finance.get(reverse("billing-run-cycle")).status_code == 405


def test_close_early_ends_the_period_now_and_the_next_starts_now(month, record, clock):
    finance = finance_client()
    running = BillingPeriod.objects.get(start=T0 + 2 * H)
    closed = BillingPeriod.objects.get(start=T0)
    url = reverse("admin:invoicing_billingperiod_changelist")
    data = {"action": "close_early", "_selected_action": [running.pk, closed.pk], "index": "0"}
    page = finance.post(url, data)
    assert page.status_code == 200 and "End these periods now" in page.content.decode()
    response = finance.post(url, {**data, "post": "yes", "reason": "customer leaves"}, follow=True)
    texts = [str(m) for m in response.context["messages"]]
    assert any(t.startswith("Ended now: acme") for t in texts), texts
    assert any(t.startswith("Refused:") and "has ended already" in t for t in texts), texts
    running.refresh_from_db()
    assert running.end == NOW
    following = BillingPeriod.objects.get(customer=running.customer, start=NOW)
    assert following.end == T0 + 3 * H  # the rest of the old window, then regular periods
    entry = AuditEntry.objects.get(action="period.closed_early")
    assert (entry.actor, entry.data["reason"]) == ("fiona", "customer leaves")
    assert entry.data["scheduled_end"] == (T0 + 3 * H).isoformat()
    # usage before and after the cut each lands in its own period, once
    record([ev("late-before", "agent_tasks", None, NOW - M)], now=NOW + M)
    record([ev("after", "agent_tasks", None, NOW + M)], now=NOW + 2 * M)
    clock.move_to(NOW + 11 * M)
    closing.close_due_periods(now=NOW + 11 * M)  # the ended period, after its grace
    ended = Invoice.objects.get(period=running)
    assert [
        (line.meter.code, line.quantity)
        for line in ended.lines.filter(kind="usage", quantity__gt=0)
    ] == [("agent_tasks", 1)]
    clock.move_to(T0 + 3 * H + 11 * M)
    closing.close_due_periods(now=T0 + 3 * H + 11 * M)
    nxt = Invoice.objects.get(period=following)
    assert [
        (line.meter.code, line.quantity) for line in nxt.lines.filter(kind="usage", quantity__gt=0)
    ] == [("agent_tasks", 1)]
    assert reconcile() == []


def read_csv(response) -> list[list[str]]:
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response.streaming
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_exports_of_the_month_streamed_and_spreadsheet_safe(month):
    finance = finance_client()
    url = reverse("billing-export")
    rows = read_csv(finance.get(url, {"kind": "invoices", "month": "2026-11"}))
    header, *body = rows
    assert header[:4] == ["number", "status", "customer_id", "customer_name"]
    by_number = {row[0]: dict(zip(header, row, strict=True)) for row in body}
    first = by_number["INV-2026-000001"]
    assert first["customer_name"] == "'=HYPERLINK(evil)"  # neutralised, one quote
    assert (first["total_minor"], first["credited_minor"], first["amount_due_minor"]) == (
        "2915",
        "100",
        "2815",
    )
    assert len(body) == 2  # hours 1 and 2 (hour 3 is running: no invoice yet)
    lines = read_csv(finance.get(url, {"kind": "lines", "month": "2026-11"}))
    tokens = [r for r in lines[1:] if r[0] == "INV-2026-000001" and r[6] == "llm_tokens"]
    assert tokens[0][9:11] == ["2400", "100"]
    notes = read_csv(finance.get(url, {"kind": "credit-notes", "month": "2026-11"}))
    assert notes[1][:5] == ["CN-2026-000001", "INV-2026-000001", "acme", "USD", "100"]
    assert notes[1][6] == "'-1 token bug"
    revenue = read_csv(finance.get(url, {"kind": "revenue", "month": "2026-11"}))
    assert revenue[-1] == ["2026-11", "USD", "2815", "0", "2815"]
    assert not AuditEntry.objects.filter(action__startswith="admin.export").exists()  # GETs read


@pytest.mark.parametrize(
    "query",
    [
        {"kind": "invoices", "month": "2026-13"},
        {"kind": "invoices", "month": "1999-01"},
        {"kind": "invoices"},
        {"kind": "everything", "month": "2026-11"},
    ],
)
def test_export_refuses_bad_input_with_a_clear_400(month, query):
    response = finance_client().get(reverse("billing-export"), query)
    assert response.status_code == 400
    assert response.content.decode().strip()


def test_back_office_pages_need_a_finance_login(month, client):
    for url in (reverse("admin:index"), reverse("billing-export") + "?kind=invoices&month=2026-11"):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert client.post(reverse("billing-run-cycle")).status_code == 302
    assert not AuditEntry.objects.filter(action="admin.billing_cycle_run").exists()
