"""Month-end in a real browser (Playwright in Debian's Chromium, as the portal tests): finance
signs in and lands on the billing overview, opens a figure's list, closes a period early,
issues a credit note and downloads the invoice PDF. Screenshots go to test-output/screenshots/.
"""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.utils import timezone
from playwright.sync_api import expect
from pypdf import PdfReader

from audit.models import AuditEntry
from invoicing.models import BillingPeriod, CreditNote, Invoice
from invoicing.services import invoices
from tests.portal.conftest import PASSWORD
from tests.portal.test_browser import acme_world, browser, page, shot  # noqa: F401 - fixtures

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs("chromium"),
    pytest.mark.django_db(transaction=True),
]

FINANCE_PERMISSIONS = {
    "invoicing": [
        "view_billingperiod",
        "change_billingperiod",
        "view_invoice",
        "change_invoice",
        "view_invoiceline",
        "view_creditnote",
        "add_creditnote",
        "view_creditnoteline",
        "view_stripeinvoicesync",
        "view_stripecreditnotesync",
    ],
    "metering": ["view_customer"],
}


def finance_login(page) -> None:  # noqa: F811 - the page fixture
    """A Finance-group user (its permissions given again: data migrations' rows do not survive
    the flush of earlier transactional tests), signed in to the admin."""
    group, _ = Group.objects.get_or_create(name="Finance")
    for app, codenames in FINANCE_PERMISSIONS.items():
        group.permissions.add(
            *Permission.objects.filter(content_type__app_label=app, codename__in=codenames)
        )
    user = User.objects.create_user(username="finance", password=PASSWORD, is_staff=True)
    user.groups.add(group)
    page.goto("/admin/")
    page.get_by_label("Username").fill("finance")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/admin/")


def test_month_end_in_the_browser(page, acme_world):  # noqa: F811 - fixtures
    acme, draft, _ = acme_world
    customer = acme.customer
    invoices.mark_summary_sent(invoice_id=draft.pk, at=draft.created_at)
    invoice = invoices.finalize_invoice(invoice_id=draft.pk, now=timezone.now())
    finance_login(page)

    # 1. The overview is the front page; a figure opens its filtered list.
    expect(page.get_by_role("heading", name="Billing overview")).to_be_visible()
    expect(page.locator("#billing-overview")).to_contain_text("Finalized, not yet due")
    shot(page, "admin_overview", portal=False)
    running = BillingPeriod.objects.get(
        customer=customer, start__lte=timezone.now(), end__gt=timezone.now()
    )
    page.locator('[data-kind="periods"]').first.get_by_text("Open (running)").click()
    expect(page.locator("#result_list")).to_contain_text("acme")
    shot(page, "admin_overview_open_periods", portal=False)

    # 2. Close the running period early, with a reason.
    page.goto("/admin/invoicing/billingperiod/")
    page.locator(f'input[name="_selected_action"][value="{running.pk}"]').check()
    page.locator('select[name="action"]').select_option("close_early")
    page.get_by_role("button", name="Go", exact=True).click()
    expect(page.get_by_role("button", name="End these periods now")).to_be_visible()
    page.get_by_label("Reason").fill("customer moves to annual billing")
    shot(page, "admin_close_early_form", portal=False)
    page.get_by_role("button", name="End these periods now").click()
    expect(page.locator(".messagelist")).to_contain_text("Ended now: acme")
    shot(page, "admin_closed_early", portal=False)
    running.refresh_from_db()
    assert running.end <= timezone.now()
    assert BillingPeriod.objects.filter(customer=customer, start=running.end).exists()
    assert AuditEntry.objects.get(action="period.closed_early").actor == "finance"

    # 3. Issue a credit note from the invoice's page.
    page.goto(f"/admin/invoicing/invoice/{invoice.pk}/change/")
    page.get_by_role("link", name="Issue a credit note").click()
    line = invoice.lines.filter(amount_minor__gt=100).order_by("position").first()
    page.locator(f'input[name="line_{line.pk}"]').fill("1.00")
    page.get_by_label("Reason").fill("duplicate agent run")
    shot(page, "admin_credit_note_form", portal=False)
    page.get_by_role("button", name="Issue credit note").click()
    expect(page.locator(".messagelist")).to_contain_text("Issued credit note CN-")
    note = CreditNote.objects.get()
    assert note.total_minor == 100
    shot(page, "admin_credit_note_issued", portal=False)

    # 4. Download the PDF and read it back.
    with page.expect_download() as download_info:
        page.locator("a.invoice-pdf").first.click()
    download = download_info.value
    assert download.suggested_filename == f"invoice-{invoice.number}.pdf"
    data = download.path().read_bytes()
    text = " ".join(" ".join(p.extract_text().split()) for p in PdfReader(io.BytesIO(data)).pages)
    assert f"Invoice {invoice.number}" in text
    assert f"Credit note {note.number}" in text
    assert "duplicate agent run" in text
    invoice = Invoice.objects.get(pk=invoice.pk)
    assert invoice.due_at is not None and invoice.due_at > timezone.now() + timedelta(days=1)
