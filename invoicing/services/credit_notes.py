"""Credit notes: correcting a finalized invoice without voiding it.

A credit note credits part or all of some of an invoice's lines, with a reason. Each credited
amount is positive and at most what the line billed less what earlier credit notes credited
of it, and a note never takes the invoice's credited total past its total (a cap-credit line
already lowers it). Only a finalized or paid invoice takes one: a draft is not owed yet, and a
void or uncollectible one is owed no more. Notes are numbered gaplessly in their own sequence
(CN-<year>-<n>) under the invoice's row lock, never change, are audited with who issued them,
and reduce what is owed (`documents.amount_due_minor`). With the Stripe backend the note's
delivery is recorded in the same transaction and made after commit
(invoicing.stripe.credit_notes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus

from django.conf import settings
from django.db import transaction
from django.db.models import Sum

from audit.services import record_audit
from billing_project.errors import DomainError
from invoicing import tasks
from invoicing.models import (
    CreditNote,
    CreditNoteLine,
    CreditNoteNumberSequence,
    Invoice,
    InvoiceLine,
    StripeCreditNoteSync,
)
from invoicing.services.invoices import next_in_sequence
from metering.currencies import format_minor

REASON_MAX = 1000
CREDITABLE = (Invoice.Status.FINALIZED, Invoice.Status.PAID)


class CreditNoteInvalid(DomainError):
    """The credit note cannot be issued as asked (422); nothing was written."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "credit_note_invalid"


@dataclass(frozen=True)
class CreditLine:
    invoice_line_id: int
    amount_minor: int


def credited_by_line(invoice_id: int) -> dict[int, int]:
    """Invoice line id -> what credit notes have credited of it so far."""
    rows = (
        CreditNoteLine.objects.filter(credit_note__invoice_id=invoice_id)
        .values("invoice_line_id")
        .annotate(total=Sum("amount_minor"))
    )
    return {row["invoice_line_id"]: row["total"] for row in rows}


def creditable_minor(line: InvoiceLine, credited: dict[int, int]) -> int:
    """The most a new credit note may credit of the line (0 for a credit line)."""
    return max(line.amount_minor - credited.get(line.pk, 0), 0)


@transaction.atomic
def issue_credit_note(
    *,
    invoice_id: int,
    lines: Sequence[CreditLine],
    reason: str,
    now: datetime,
    user: object = None,
) -> CreditNote:
    """Issue a numbered credit note against a finalized (or paid) invoice; raises
    CreditNoteInvalid, naming every problem, with nothing written."""
    invoice = Invoice.objects.select_for_update().select_related("customer").get(pk=invoice_id)
    reason = reason.strip()
    problems: list[str] = []
    if invoice.status not in CREDITABLE:
        problems.append(
            f"invoice {invoice} is {invoice.get_status_display().lower()}: only a finalized or "
            "paid invoice takes a credit note"
        )
    if not reason:
        problems.append("a reason is required")
    elif len(reason) > REASON_MAX:
        problems.append(f"the reason is longer than {REASON_MAX} characters")
    wanted = [line for line in lines if line.amount_minor != 0]
    if not wanted:
        problems.append("credit at least one line")
    by_id = {line.pk: line for line in invoice.lines.select_related("meter")}
    credited = credited_by_line(invoice.pk)
    seen: set[int] = set()
    for item in wanted:
        line = by_id.get(item.invoice_line_id)
        if line is None:
            problems.append(f"line {item.invoice_line_id} is not a line of invoice {invoice}")
            continue
        if item.invoice_line_id in seen:
            problems.append(f"line {line.position} is named twice")
            continue
        seen.add(item.invoice_line_id)
        most = creditable_minor(line, credited)
        if item.amount_minor < 0:
            problems.append(f"line {line.position}: a credit is a positive amount")
        elif item.amount_minor > most:
            problems.append(
                f"line {line.position} ({line.description}): at most "
                f"{format_minor(most, invoice.currency)} can be credited"
            )
    total = sum(item.amount_minor for item in wanted)
    already = sum(credited.values())
    if not problems and total > invoice.total_minor - already:
        problems.append(
            f"the credit notes would exceed the invoice's total: at most "
            f"{format_minor(max(invoice.total_minor - already, 0), invoice.currency)} is left"
        )
    if problems:
        raise CreditNoteInvalid("; ".join(problems))
    note = CreditNote.objects.create(
        invoice=invoice,
        number=next_in_sequence(CreditNoteNumberSequence, now.year, "CN"),
        currency=invoice.currency,
        total_minor=total,
        reason=reason,
        issued_at=now,
    )
    ordered = sorted(wanted, key=lambda item: by_id[item.invoice_line_id].position)
    CreditNoteLine.objects.bulk_create(
        CreditNoteLine(
            credit_note=note,
            invoice_line_id=item.invoice_line_id,
            position=position,
            description=by_id[item.invoice_line_id].description,
            amount_minor=item.amount_minor,
        )
        for position, item in enumerate(ordered, start=1)
    )
    record_audit(
        action="credit_note.issued",
        obj=note,
        user=user,
        customer_external_id=invoice.customer.external_id,
        data={
            "invoice_id": invoice.pk,
            "invoice_number": invoice.number,
            "number": note.number,
            "total_minor": total,
            "reason": reason,
            "lines": [
                {
                    "invoice_line_id": item.invoice_line_id,
                    "position": by_id[item.invoice_line_id].position,
                    "amount_minor": item.amount_minor,
                }
                for item in ordered
            ],
        },
    )
    if settings.BILLING_BACKEND == "stripe":
        StripeCreditNoteSync.objects.create(credit_note=note)
        tasks.deliver_credit_note.delay_on_commit(note.pk)
    return note


def credited_minor(invoice: Invoice) -> int:
    total = invoice.credit_notes.aggregate(total=Sum("total_minor"))["total"]
    return int(total or 0)
