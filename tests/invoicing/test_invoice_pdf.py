"""The invoice document customers and accountants accept: the seller and the customer's billing
details, issue and due dates, the paid state, lines priced in the currency's terms; a real PDF
(WeasyPrint), read back with pypdf; attached to the finalization e-mail; downloadable from the
portal and the admin."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
import time_machine
from django.urls import reverse
from pypdf import PdfReader

from invoicing.documents import render_invoice_pdf
from invoicing.models import Invoice
from invoicing.services import closing, invoices
from metering.models import PortalMembership
from notifications.models import Notification
from tests.invoicing.backoffice import finance_client
from tests.invoicing.conftest import T0
from tests.invoicing.test_closing import usage_events

pytestmark = pytest.mark.django_db
H = timedelta(hours=1)
CLOSE_AT = T0 + H + timedelta(minutes=10)
FINALIZE_AT = T0 + 3 * H


def pdf_text(data: bytes) -> str:
    assert data.startswith(b"%PDF-")
    reader = PdfReader(io.BytesIO(data))
    return " ".join(" ".join(page.extract_text().split()) for page in reader.pages)


@pytest.fixture
def clock():
    """Time stands at the finalization (documents say "overdue" against the clock)."""
    with time_machine.travel(FINALIZE_AT, tick=False) as traveller:
        yield traveller


@pytest.fixture
def seller(settings):
    settings.BILLING_SELLER_NAME = "Agentworks GmbH"
    settings.BILLING_SELLER_ADDRESS = "Torstrasse 1\\n10119 Berlin\\nGermany"
    settings.BILLING_SELLER_TAX_ID = "DE123456789"
    settings.BILLING_SELLER_EMAIL = "billing@agentworks.example"
    settings.BILLING_PAYMENT_TERMS_DAYS = 14
    settings.BILLING_GRACE_PERIOD = 600
    settings.BILLING_REVIEW_PERIOD = 0


@pytest.fixture
def finalized(clock, seller, subscribed, record, django_capture_on_commit_callbacks, mailoutbox):
    """acme's first hour (DESIGN example plan, $29.15), summary sent, finalized."""
    customer = subscribed
    customer.billing_address = "1 Acme Way\nSpringfield"
    customer.tax_id = "US-EIN-12-3456789"
    customer.emails = ["ap@acme.example"]
    customer.save()
    record(usage_events(), now=T0 + timedelta(minutes=20))
    closing.close_due_periods(now=CLOSE_AT)
    draft = Invoice.objects.get(period__start=T0)
    invoices.mark_summary_sent(invoice_id=draft.pk, at=CLOSE_AT)
    with django_capture_on_commit_callbacks(execute=True):
        invoice = invoices.finalize_invoice(invoice_id=draft.pk, now=FINALIZE_AT)
    return invoice


def test_pdf_carries_seller_customer_dates_and_priced_lines(finalized):
    invoice = Invoice.objects.get(pk=finalized.pk)
    assert invoice.due_at == FINALIZE_AT + timedelta(days=14)
    text = pdf_text(render_invoice_pdf(invoice))
    for expected in [
        "Invoice INV-2026-000001",
        "Agentworks GmbH",
        "Torstrasse 1",
        "10119 Berlin",
        "Tax ID: DE123456789",
        "billing@agentworks.example",
        "1 Acme Way",
        "Springfield",
        "Tax ID: US-EIN-12-3456789",
        "Issue date 2026-11-02 13:00 UTC",
        "Due date 2026-11-16 13:00 UTC",
        "Due by 2026-11-16 13:00 UTC",
        # each line with what its quantity was priced at, in the currency's format
        "$0.05 per task",
        "$1.50 per 60 minutes",
        "$0.00002 (tier 1)",
        "$24.00",
        "Total $29.15",
        "Amount due $29.15",
    ]:
        assert expected in text, expected


def test_paid_and_overdue_states(finalized, clock):
    late = FINALIZE_AT + timedelta(days=15)
    clock.move_to(late)
    invoice = Invoice.objects.get(pk=finalized.pk)
    assert "Overdue since 2026-11-16 13:00 UTC" in pdf_text(render_invoice_pdf(invoice))
    invoices.mark_invoice_paid(invoice_id=invoice.pk, now=late)
    text = pdf_text(render_invoice_pdf(Invoice.objects.get(pk=invoice.pk)))
    assert "Paid on 2026-11-17 13:00 UTC" in text
    assert "Overdue" not in text
    assert "Amount due $0.00" in text


def test_finalization_email_attaches_the_pdf_once(finalized, mailoutbox):
    sent = [m for m in mailoutbox if m.subject.startswith("Invoice ")]
    assert len(sent) == 1
    message = sent[0]
    assert message.subject == "Invoice INV-2026-000001 from Agentworks GmbH: $29.15"
    assert message.to == ["ap@acme.example"]
    assert "Due date: 2026-11-16 13:00 UTC" in message.body
    [(filename, content, mimetype)] = message.attachments
    assert (filename, mimetype) == ("invoice-INV-2026-000001.pdf", "application/pdf")
    assert "Total $29.15" in pdf_text(content)
    # a retried finalization is a no-op: no second e-mail row
    invoices.finalize_invoice(invoice_id=finalized.pk, now=FINALIZE_AT + H)
    assert Notification.objects.filter(kind="invoice").count() == 1


def test_no_invoice_email_with_the_stripe_backend(seller, settings, subscribed, record):
    settings.BILLING_BACKEND = "stripe"
    record(usage_events(), now=T0 + timedelta(minutes=20))
    closing.close_due_periods(now=CLOSE_AT)
    draft = Invoice.objects.get(period__start=T0)
    invoices.mark_summary_sent(invoice_id=draft.pk, at=CLOSE_AT)
    with pytest.MonkeyPatch.context() as patch:  # delivery to Stripe is not under test here
        patch.setattr("invoicing.tasks.deliver_invoice.delay_on_commit", lambda *a: None)
        invoices.finalize_invoice(invoice_id=draft.pk, now=FINALIZE_AT)
    assert not Notification.objects.filter(kind="invoice").exists()


def test_pdf_downloads_from_admin_and_portal(finalized, client, django_user_model):
    finance = finance_client()
    response = finance.get(reverse("admin:invoicing_invoice_pdf", args=[finalized.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert 'filename="invoice-INV-2026-000001.pdf"' in response["Content-Disposition"]
    assert "Agentworks GmbH" in pdf_text(response.content)
    page = finance.get(reverse("admin:invoicing_invoice_changelist")).content.decode()
    assert reverse("admin:invoicing_invoice_pdf", args=[finalized.pk]) in page
    # the customer's own login downloads it; another customer's gets 404
    user = django_user_model.objects.create_user("acme-ap", password="x-password-1")
    PortalMembership.objects.create(user=user, customer=finalized.customer)
    client.force_login(user)
    url = reverse("portal:invoice_pdf", args=[finalized.pk])
    response = client.get(url)
    assert response.status_code == 200
    assert "Invoice INV-2026-000001" in pdf_text(response.content)
    assert url in client.get(reverse("portal:invoice", args=[finalized.pk])).content.decode()
    assert client.get(reverse("portal:invoice_pdf", args=[finalized.pk + 1000])).status_code == 404
