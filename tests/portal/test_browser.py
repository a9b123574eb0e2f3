"""The portal and the admin in a real browser: Playwright drives Debian's Chromium against the
live test server. Screenshots of each page go to test-output/screenshots/ (not committed).

Never downloads a browser: they need Debian's /usr/bin/chromium (a run without it refuses to
start, see tests/tools.py).
"""

from __future__ import annotations

import csv
import io
import os
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from django.contrib.auth.models import Group, Permission, User
from django.utils import timezone
from playwright.sync_api import expect

from budgets import services as budget_services
from budgets.models import BudgetCap
from invoicing.models import BillingPeriod, Invoice
from invoicing.services import invoices
from metering import services as metering_services
from metering.currencies import format_minor
from metering.models import Customer, UsageEvent
from tests.portal.conftest import PASSWORD, build_history, make_meters, make_portal_customer
from tests.tools import CHROMIUM

# Playwright's sync API runs an event loop in this thread; the ORM calls of the test itself
# are still synchronous and safe.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs("chromium"),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(
        base_url=live_server.url, viewport={"width": 1280, "height": 900}, accept_downloads=True
    )
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


# Form controls with no label (explicit, wrapping, aria-label or aria-labelledby).
UNLABELLED = """() => Array.from(document.querySelectorAll(
    'input:not([type=hidden]), select, textarea'))
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                && !el.getAttribute('aria-labelledby'))
  .map(el => el.name || el.id || el.outerHTML)"""


def shot(page, name: str, *, portal: bool = True) -> None:
    """Save a screenshot; on portal pages also check every control is labelled and the page
    declares its language and viewport."""
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    if portal:
        assert page.evaluate(UNLABELLED) == [], name
        assert page.locator("html[lang]").count() == 1
        assert page.locator('meta[name="viewport"]').count() == 1


def submit(page, button: str) -> None:
    """Press a form's button and wait for the page it leads to (after the redirect)."""
    with page.expect_navigation():
        page.get_by_role("button", name=button, exact=True).click()


def sign_in(page, username: str, password: str = PASSWORD) -> None:
    page.goto("/portal/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url("**/portal/")


@pytest.fixture
def acme_world(live_server):
    """acme (New York, USD) with a closed draft invoice, usage this period, a service key."""
    make_meters()
    key, plaintext = metering_services.create_api_key(name="agents")
    acme = make_portal_customer("acme", tz="America/New_York")
    invoice = build_history(acme, key)
    return acme, invoice, plaintext


def test_customer_journey(page, live_server, acme_world):
    acme, invoice, api_key = acme_world
    customer = acme.customer

    page.goto("/portal/")
    assert "/portal/login/" in page.url  # anonymous: sent to sign in
    shot(page, "login")
    sign_in(page, acme.user.username)

    # The dashboard says what the usage API says.
    api = requests.get(
        f"{live_server.url}/api/v1/customers/acme/usage",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    ).json()
    rows = page.locator("#usage-lines tbody tr[data-meter]")
    shown = [
        (
            rows.nth(i).get_attribute("data-meter"),
            Decimal(rows.nth(i).get_attribute("data-quantity")),
            int(rows.nth(i).get_attribute("data-amount-minor")),
        )
        for i in range(rows.count())
    ]
    assert shown == [
        (line["meter"], Decimal(line["quantity"]), line["amount_minor"]) for line in api["lines"]
    ]
    for line in api["lines"]:
        row = page.locator(f'#usage-lines tr[data-meter="{line["meter"]}"]')
        assert format_minor(line["amount_minor"], "USD") in row.inner_text()
    total = page.locator("[data-total-minor]").first
    assert int(total.get_attribute("data-total-minor")) == api["total_minor"]
    assert total.inner_text() == format_minor(api["total_minor"], "USD")

    # The chart is drawn: one SVG per meter, bars with tooltips.
    charts = page.locator('figure.chart svg[role="img"]')
    assert charts.count() == 3
    assert page.locator("figure.chart rect.bar").count() > 0
    assert page.locator("figure.chart rect.bar title").first.text_content()
    # The breakdown by property reads events: the page's script loads it after the page.
    expect(page.locator("#breakdown-panel table#breakdown")).to_be_visible()
    assert page.locator("#breakdown tbody tr").count() > 0
    page.get_by_label("Range").select_option("7")
    page.get_by_role("button", name="Show", exact=True).click()
    page.wait_for_url("**days=7**")
    assert page.locator("figure.chart rect.bar").count() > 0
    shot(page, "dashboard")

    # Keyboard: the skip link is the first stop and moves focus to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"

    # Invoices: the draft is marked, its detail has every line.
    page.get_by_role("link", name="Invoices", exact=True).click()
    page.wait_for_url("**/portal/invoices/")
    expect(page.get_by_text("Draft — summary, not yet charged").first).to_be_visible()
    shot(page, "invoices")
    page.get_by_role("link", name=f"Draft #{invoice.pk}", exact=True).click()
    page.wait_for_url(f"**/portal/invoices/{invoice.pk}/")
    assert page.locator("#invoice-lines tbody tr").count() == invoice.lines.count()
    assert page.locator("#invoice-total").inner_text() == format_minor(invoice.total_minor, "USD")
    shot(page, "invoice_detail")
    with page.expect_popup() as popup:
        page.get_by_role("link", name="View and print the document").click()
    document = popup.value
    document.wait_for_load_state()
    assert "DRAFT" in document.locator(".number").inner_text()
    shot(document, "invoice_document", portal=False)
    document.close()

    # Export: the current period's events as CSV.
    page.get_by_role("link", name="Export", exact=True).click()
    page.wait_for_url("**/portal/export/")
    shot(page, "export")
    with page.expect_download() as download_info:
        page.locator("#export-period").click()
    download = download_info.value
    assert download.suggested_filename.startswith("usage-acme-")
    rows = list(csv.reader(io.StringIO(Path(download.path()).read_text())))
    period = BillingPeriod.objects.get(
        customer=customer, start__lte=timezone.now(), end__gt=timezone.now()
    )
    expected = UsageEvent.objects.filter(
        customer=customer, timestamp__gte=period.start, timestamp__lt=period.end
    ).count()
    assert rows[0] == ["event_id", "customer_id", "meter", "quantity", "timestamp", "properties"]
    assert len(rows) - 1 == expected == 9

    # Budget: paused at a cap below the spend; raising the cap resumes...
    budget_services.set_budget_cap(
        customer=customer,
        cap_minor=1000,
        thresholds=[50, 80, 100],
        action="pause",
        now=timezone.now(),
    )
    assert Customer.objects.get(pk=customer.pk).status == "paused"
    page.get_by_role("link", name="Budget", exact=True).click()
    page.wait_for_url("**/portal/budget/")
    assert (
        page.locator("[data-budget-status]").first.get_attribute("data-budget-status") == "paused"
    )
    # the three thresholds and, since issue 13 item 7, the pause they caused
    assert page.locator("#alerts tbody tr").count() == 4
    assert "Paused: the cap was changed" in page.locator("#alerts").inner_text()
    shot(page, "budget_paused")
    page.get_by_label("Cap per billing period (USD)").fill("250.50")
    submit(page, "Save budget")
    expect(page.get_by_text("Budget saved.")).to_be_visible()
    assert BudgetCap.objects.get(customer=customer).cap_minor == 25050
    assert Customer.objects.get(pk=customer.pk).status == "active"

    # ...and so does acknowledging, after the cap is lowered below the spend again.
    page.get_by_label("Cap per billing period (USD)").fill("5")
    submit(page, "Save budget")
    assert Customer.objects.get(pk=customer.pk).status == "paused"
    submit(page, "Acknowledge and resume")
    expect(page.get_by_text("Resumed: your agents may work")).to_be_visible()
    assert Customer.objects.get(pk=customer.pk).status == "active"
    status = page.locator("[data-budget-status]").first.get_attribute("data-budget-status")
    assert status in {"active", "warning"}
    shot(page, "budget_resumed")

    # A bad amount is refused with the error next to the field.
    page.get_by_label("Cap per billing period (USD)").fill("12.345")
    submit(page, "Save budget")
    expect(page.get_by_text("USD amounts have at most 2 decimal places.")).to_be_visible()
    assert page.get_by_label("Cap per billing period (USD)").get_attribute("aria-invalid") == "true"
    assert BudgetCap.objects.get(customer=customer).cap_minor == 500

    # Narrow screens: the layout reflows without horizontal scrolling of the page.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/portal/")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    shot(page, "dashboard_mobile")

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/portal/login/")


def test_finance_user_finalizes_a_draft_in_the_admin(page, acme_world):
    _, invoice, _ = acme_world
    # The customer had the itemized summary: finance may finalize before the review ends.
    invoices.mark_summary_sent(invoice_id=invoice.pk, at=invoice.created_at)
    # Data migrations' rows do not survive the flush of earlier transactional tests: make
    # sure the Finance group has the invoice permissions it is given in production.
    finance_group, _ = Group.objects.get_or_create(name="Finance")
    finance_group.permissions.add(
        *Permission.objects.filter(
            content_type__app_label="invoicing",
            codename__in=["view_invoice", "change_invoice", "view_invoiceline"],
        )
    )
    finance = User.objects.create_user(
        username="finance", password=PASSWORD, is_staff=True, email="finance@operator.example"
    )
    finance.groups.add(finance_group)
    assert not finance.is_superuser

    page.goto("/admin/")
    page.get_by_label("Username").fill("finance")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/admin/")
    page.goto("/admin/invoicing/invoice/")
    shot(page, "admin_invoices", portal=False)
    page.locator(f'input[name="_selected_action"][value="{invoice.pk}"]').check()
    page.locator('select[name="action"]').select_option("finalize")
    page.get_by_role("button", name="Go", exact=True).click()
    expect(page.locator(".messagelist")).to_be_visible()
    shot(page, "admin_finalized", portal=False)
    invoice = Invoice.objects.get(pk=invoice.pk)
    assert invoice.status == "finalized" and invoice.number
    expect(page.get_by_text(f"Now finalized: {invoice.number}")).to_be_visible()
