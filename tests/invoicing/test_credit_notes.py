"""Credit notes: correcting a finalized invoice without voiding it. Numbered gaplessly in their
own sequence, referencing the invoice and the lines they credit, with a reason; they reduce what
is owed, are audited with who issued them, show in the portal and pass reconcile."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from audit.models import AuditEntry
from invoicing.documents import invoice_document_context, render_invoice_document
from invoicing.models import CreditNote, CreditNoteLine, Invoice, InvoiceLine
from invoicing.services import closing, credit_notes, invoices
from invoicing.services.reconcile import reconcile
from metering.models import PortalMembership
from tests.invoicing.backoffice import finance_client, finance_user
from tests.invoicing.conftest import T0
from tests.invoicing.test_closing import usage_events

pytestmark = pytest.mark.django_db
H = timedelta(hours=1)
NOW = T0 + 3 * H


@pytest.fixture
def invoice(subscribed, record, settings):
    """acme's first hour finalized: minutes $5.00, tasks $0.15, tokens $24.00 = $29.15."""
    settings.BILLING_GRACE_PERIOD = 600
    settings.BILLING_REVIEW_PERIOD = 0
    record(usage_events(), now=T0 + timedelta(minutes=20))
    closing.close_due_periods(now=T0 + H + timedelta(minutes=10))
    draft = Invoice.objects.get(period__start=T0)
    invoices.mark_summary_sent(invoice_id=draft.pk, at=T0 + H + timedelta(minutes=10))
    return invoices.finalize_invoice(invoice_id=draft.pk, now=T0 + 2 * H)


def line(invoice: Invoice, meter: str) -> InvoiceLine:
    return invoice.lines.get(meter__code=meter)


def credit(invoice: Invoice, *pairs: tuple[str, int], reason: str = "agent loop bug", user=None):
    return credit_notes.issue_credit_note(
        invoice_id=invoice.pk,
        lines=[credit_notes.CreditLine(line(invoice, m).pk, amount) for m, amount in pairs],
        reason=reason,
        now=NOW,
        user=user,
    )


def test_credit_note_is_numbered_references_lines_and_reduces_what_is_owed(invoice):
    user = finance_user()
    note = credit(invoice, ("llm_tokens", 1000), ("agent_tasks", 15), user=user)

    assert note.number == "CN-2026-000001"
    assert note.total_minor == 1015
    assert [(cl.invoice_line.meter.code, cl.amount_minor) for cl in note.lines.all()] == [
        ("agent_tasks", 15),
        ("llm_tokens", 1000),
    ]  # in the invoice's line order
    document = invoice_document_context(Invoice.objects.get(pk=invoice.pk))
    assert document["total"] == "$29.15"
    assert document["amount_due"] == "$19.00"
    [shown] = document["credits"]
    assert (shown.number, shown.amount, shown.reason) == (
        "CN-2026-000001",
        "-$10.15",
        "agent loop bug",
    )
    entry = AuditEntry.objects.get(action="credit_note.issued")
    assert entry.actor == "fiona"
    assert entry.data["invoice_id"] == invoice.pk
    assert entry.data["total_minor"] == 1015
    assert entry.data["reason"] == "agent loop bug"
    assert [item["amount_minor"] for item in entry.data["lines"]] == [15, 1000]
    # the next note takes the next number: its own gapless sequence, apart from invoices'
    second = credit(invoice, ("llm_tokens", 1400))
    assert second.number == "CN-2026-000002"
    assert Invoice.objects.get(pk=invoice.pk).number == "INV-2026-000001"
    assert invoice_document_context(invoice)["amount_due"] == "$5.00"
    assert reconcile() == []


@pytest.mark.parametrize(
    ("pairs", "reason", "message"),
    [
        ([("llm_tokens", 2401)], "x", r"at most \$24.00 can be credited"),
        ([("agent_tasks", -5)], "x", "a credit is a positive amount"),
        ([], "x", "credit at least one line"),
        ([("agent_tasks", 5)], "  ", "a reason is required"),
        ([("agent_tasks", 5)], "r" * 1001, "longer than 1000 characters"),
    ],
)
def test_refusals_name_the_problem_and_write_nothing(invoice, pairs, reason, message):
    with pytest.raises(credit_notes.CreditNoteInvalid, match=message):
        credit(invoice, *pairs, reason=reason)
    assert not CreditNote.objects.exists()
    assert not CreditNoteLine.objects.exists()
    assert not AuditEntry.objects.filter(action="credit_note.issued").exists()


def test_a_line_is_never_credited_past_what_it_billed(invoice):
    credit(invoice, ("llm_tokens", 2000))
    with pytest.raises(credit_notes.CreditNoteInvalid, match=r"at most \$4.00 can be credited"):
        credit(invoice, ("llm_tokens", 401))
    with pytest.raises(credit_notes.CreditNoteInvalid, match="is not a line of invoice"):
        credit_notes.issue_credit_note(
            invoice_id=invoice.pk,
            lines=[credit_notes.CreditLine(invoice_line_id=10**9, amount_minor=1)],
            reason="x",
            now=NOW,
        )
    assert CreditNote.objects.count() == 1


def test_only_finalized_or_paid_invoices_take_credit_notes(invoice, record):
    invoices.void_invoice(invoice_id=invoice.pk, reason="wrong customer", now=NOW)
    with pytest.raises(credit_notes.CreditNoteInvalid, match="only a finalized or paid"):
        credit(invoice, ("agent_tasks", 5))
    closing.close_due_periods(now=T0 + 2 * H + timedelta(minutes=10))  # the second hour
    draft = Invoice.objects.filter(status="draft").first()
    assert draft is not None
    with pytest.raises(credit_notes.CreditNoteInvalid, match="is draft"):
        credit_notes.issue_credit_note(
            invoice_id=draft.pk,
            lines=[credit_notes.CreditLine(draft.lines.first().pk, 1)],
            reason="x",
            now=NOW,
        )


def test_reconcile_finds_a_credit_note_that_disagrees_with_its_lines(invoice):
    note = credit(invoice, ("agent_tasks", 15))
    CreditNote.objects.filter(pk=note.pk).update(total_minor=16)
    problems = reconcile()
    assert problems == ["credit note CN-2026-000001: total 16 != its lines 15"]
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 difference"):
        call_command("reconcile", stdout=out, stderr=io.StringIO())
    assert "credit note CN-2026-000001" in out.getvalue()


def test_admin_issues_a_credit_note_from_the_invoice_page(invoice):
    finance = finance_client()
    change = reverse("admin:invoicing_invoice_change", args=[invoice.pk])
    url = reverse("admin:invoicing_invoice_credit_note", args=[invoice.pk])
    assert url in finance.get(change).content.decode()
    form = finance.get(url)
    assert form.status_code == 200
    tokens = line(invoice, "llm_tokens")
    assert f'name="line_{tokens.pk}"' in form.content.decode()
    # too much: the form says why, nothing is written
    response = finance.post(url, {f"line_{tokens.pk}": "24.01", "reason": "late tokens"})
    assert response.status_code == 200
    assert "at most $24.00 can be credited" in response.content.decode()
    response = finance.post(url, {f"line_{tokens.pk}": "1.005", "reason": "late tokens"})
    assert "USD amounts have at most 2 decimal places" in response.content.decode()
    assert not CreditNote.objects.exists()
    response = finance.post(
        url, {f"line_{tokens.pk}": "10.50", "reason": "late tokens"}, follow=True
    )
    assert response.redirect_chain[-1][0] == change
    page = response.content.decode()
    assert "Issued credit note CN-2026-000001 for $10.50" in page
    assert "CN-2026-000001" in page
    note = CreditNote.objects.get()
    assert (note.total_minor, note.reason) == (1050, "late tokens")
    assert AuditEntry.objects.get(action="credit_note.issued").actor == "fiona"
    listing = finance.get(reverse("admin:invoicing_creditnote_changelist")).content.decode()
    assert "CN-2026-000001" in listing
    assert (
        finance.get(reverse("admin:invoicing_creditnote_change", args=[note.pk])).status_code == 200
    )


def test_portal_shows_the_credit_note_and_the_amount_due(invoice, client, django_user_model):
    credit(invoice, ("agent_minutes", 500), reason="minimum waived")
    user = django_user_model.objects.create_user("acme-ap", password="x-password-1")
    PortalMembership.objects.create(user=user, customer=invoice.customer)
    client.force_login(user)
    page = client.get(reverse("portal:invoice", args=[invoice.pk])).content.decode()
    assert "CN-2026-000001" in page
    assert "minimum waived" in page
    assert "-$5.00" in page
    assert "$24.15" in page  # amount due
    assert "Credit note CN-2026-000001" in render_invoice_document(invoice)
