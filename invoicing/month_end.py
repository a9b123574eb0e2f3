"""What finance sees at month-end: read-only figures of periods, drafts, invoices, deliveries,
credit notes and revenue, per calendar month (UTC) and currency. Reads only (no lock, no write);
the admin's billing overview renders them (billing_cycle.month_end_admin) and the exports
stream the same rows.

Months are UTC calendar months: a period or invoice belongs to the month its period starts in
(the periods of customers east of UTC start a few hours before their local month; the admin
shows each period in its customer's zone). Revenue counts money by when it moved: invoiced in
the month an invoice was finalized (less its credit notes, void ones left out), collected in the
month it was paid, outstanding what the month's finalized invoices still owe now.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import Coalesce

from invoicing.models import (
    BillingPeriod,
    CreditNote,
    Invoice,
    InvoiceLine,
    StripeCreditNoteSync,
    StripeInvoiceSync,
)
from metering.models import Customer

S = Invoice.Status
P = BillingPeriod.Status


def month_start(day: date) -> datetime:
    return datetime(day.year, day.month, 1, tzinfo=UTC)


def next_month(start: datetime) -> datetime:
    return (start + timedelta(days=32)).replace(day=1)


def previous_month(start: datetime) -> datetime:
    return (start - timedelta(days=1)).replace(day=1)


@dataclass(frozen=True)
class Month:
    start: datetime  # inclusive, UTC midnight of the 1st
    end: datetime  # exclusive

    @classmethod
    def of(cls, moment: datetime) -> Month:
        start = month_start(moment.astimezone(UTC).date())
        return cls(start=start, end=next_month(start))

    @classmethod
    def parse(cls, text: str) -> Month:
        """ "2026-12" -> December 2026; ValueError for anything else (years 2000-2100)."""
        try:
            year, month = (int(part) for part in text.split("-"))
            start = datetime(year, month, 1, tzinfo=UTC)
        except (ValueError, TypeError):
            raise ValueError(f"{text[:20]!r} is not a month (YYYY-MM)") from None
        if not 2000 <= year <= 2100 or len(text) != 7:
            raise ValueError(f"{text[:20]!r} is not a month (YYYY-MM, 2000 to 2100)")
        return cls(start=start, end=next_month(start))

    @property
    def label(self) -> str:
        return f"{self.start:%B %Y}"

    @property
    def key(self) -> str:
        return f"{self.start:%Y-%m}"

    def previous(self) -> Month:
        start = previous_month(self.start)
        return Month(start=start, end=self.start)


@dataclass(frozen=True)
class Figure:
    """One count (and amounts per currency) with the admin list it comes from."""

    label: str
    count: int
    amounts: dict[str, int] = field(default_factory=dict)  # currency -> minor units
    changelist: str = ""  # admin URL name
    query: dict[str, str] = field(default_factory=dict)  # the list's filter


def _iso(moment: datetime) -> str:
    """An instant for an admin list filter, with its offset (Django reads it as aware)."""
    return moment.astimezone(UTC).isoformat()


def _amounts(invoices: QuerySet[Invoice]) -> dict[str, int]:
    rows = invoices.values("currency").annotate(total=Sum("total_minor")).order_by("currency")
    return {row["currency"]: int(row["total"] or 0) for row in rows}


def period_figures(month: Month, *, now: datetime) -> list[Figure]:
    periods = BillingPeriod.objects.filter(start__gte=month.start, start__lt=month.end)
    window = {"start__gte": _iso(month.start), "start__lt": _iso(month.end)}
    ended = Q(end__lte=now)
    counts = periods.aggregate(
        open=Count("pk", filter=Q(status=P.OPEN) & ~ended),
        due=Count("pk", filter=Q(status=P.OPEN) & ended),
        closing=Count("pk", filter=Q(status=P.CLOSING)),
        closed=Count("pk", filter=Q(status=P.CLOSED)),
    )
    url = "admin:invoicing_billingperiod_changelist"
    return [
        Figure(
            "Open (running)",
            counts["open"],
            changelist=url,
            query={**window, "status": "open", "end__gt": _iso(now)},
        ),
        Figure(
            "Due (ended, not closed)",
            counts["due"],
            changelist=url,
            query={**window, "status": "open", "end__lte": _iso(now)},
        ),
        Figure(
            "Closing (grace period)",
            counts["closing"],
            changelist=url,
            query={**window, "status": "closing"},
        ),
        Figure("Closed", counts["closed"], changelist=url, query={**window, "status": "closed"}),
    ]


def invoice_figures(month: Month, *, now: datetime) -> list[Figure]:
    invoices = Invoice.objects.filter(period__start__gte=month.start, period__start__lt=month.end)
    window = {"period__start__gte": _iso(month.start), "period__start__lt": _iso(month.end)}
    url = "admin:invoicing_invoice_changelist"
    overdue = Q(status=S.FINALIZED, due_at__lt=now)
    groups: list[tuple[str, Q, dict[str, str]]] = [
        (
            "Drafts awaiting their summary",
            Q(status=S.DRAFT, summary_sent_at__isnull=True),
            {"status": "draft", "summary_sent_at__isnull": "True"},
        ),
        (
            "Drafts in review",
            Q(status=S.DRAFT, summary_sent_at__isnull=False),
            {"status": "draft", "summary_sent_at__isnull": "False"},
        ),
        (
            "Finalized, not yet due",
            Q(status=S.FINALIZED) & ~overdue,
            {"status": "finalized", "due_at__gte": _iso(now)},
        ),
        ("Overdue", overdue, {"status": "finalized", "due_at__lt": _iso(now)}),
        ("Paid", Q(status=S.PAID), {"status": "paid"}),
        ("Void", Q(status=S.VOID), {"status": "void"}),
        ("Uncollectible", Q(status=S.UNCOLLECTIBLE), {"status": "uncollectible"}),
    ]
    result = []
    for label, condition, query in groups:
        selected = invoices.filter(condition)
        result.append(
            Figure(
                label,
                selected.count(),
                _amounts(selected),
                changelist=url,
                query={**window, **query},
            )
        )
    return result


def upcoming_finalizations(*, limit: int = 10) -> list[Invoice]:
    """The drafts in review, soonest to finalize first (each with when it will)."""
    return list(
        Invoice.objects.filter(status=S.DRAFT, summary_sent_at__isnull=False)
        .select_related("customer", "period")
        .order_by("finalize_after", "pk")[:limit]
    )


def attention_figures() -> list[Figure]:
    """What is stuck, whatever the month: failed or waiting deliveries, unpriced usage, paused
    customers, credit notes not yet in Stripe, unpriced usage."""
    syncs = StripeInvoiceSync.objects
    result = [
        Figure(
            "Stripe deliveries failed or needing attention",
            syncs.filter(status__in=["failed", "needs_attention"]).count(),
            changelist="admin:invoicing_stripeinvoicesync_changelist",
            query={"status__in": "failed,needs_attention"},
        ),
        Figure(
            "Stripe deliveries waiting",
            syncs.filter(status="pending").count(),
            changelist="admin:invoicing_stripeinvoicesync_changelist",
            query={"status": "pending"},
        ),
        Figure(
            "Credit notes not delivered to Stripe",
            StripeCreditNoteSync.objects.exclude(status="delivered").count(),
            changelist="admin:invoicing_creditnote_changelist",
            query={"stripe_sync__status__in": "pending,failed,needs_attention"},
        ),
        Figure(
            "Paused customers",
            Customer.objects.filter(status=Customer.Status.PAUSED).count(),
            changelist="admin:metering_customer_changelist",
            query={"status": "paused"},
        ),
    ]
    # Rate cards: usage no rule prices, waiting for finance to bill or waive it.
    open_unpriced = InvoiceLine.objects.filter(
        kind=InvoiceLine.Kind.UNPRICED, resolution__isnull=True
    )
    result.append(
        Figure(
            "Unpriced usage awaiting a decision",
            open_unpriced.count(),
            changelist="admin:invoicing_unpricedline_changelist",
            query={"decision": "open"},
        )
    )
    return result


@dataclass
class RevenueMonth:
    month: Month
    invoiced: int = 0  # finalized this month, less credit notes, void left out
    collected: int = 0  # paid this month, less credit notes
    outstanding: int = 0  # what this month's finalized invoices still owe


def _net(invoices: QuerySet[Invoice]) -> QuerySet[Invoice]:
    credited = Coalesce(Sum("credit_notes__total_minor"), 0)
    return invoices.annotate(credited=credited)


def revenue_by_month(*, until: Month, months: int = 12) -> dict[str, list[RevenueMonth]]:
    """Currency -> one row per month, oldest first, ending with `until`."""
    window: list[Month] = [until]
    while len(window) < months:
        window.insert(0, window[0].previous())
    first, last = window[0].start, window[-1].end
    by_key = {month.key: month for month in window}
    table: dict[str, dict[str, RevenueMonth]] = defaultdict(
        lambda: {m.key: RevenueMonth(m) for m in window}
    )
    issued = _net(
        Invoice.objects.filter(finalized_at__gte=first, finalized_at__lt=last).exclude(
            status=S.VOID
        )
    )
    for invoice in issued.only("currency", "total_minor", "finalized_at", "status"):
        assert invoice.finalized_at is not None  # filtered on it
        row = table[invoice.currency][Month.of(invoice.finalized_at).key]
        net = invoice.total_minor - invoice.credited  # type: ignore[attr-defined]
        row.invoiced += net
        if invoice.status == S.FINALIZED:
            row.outstanding += max(net, 0)
    paid = _net(Invoice.objects.filter(status=S.PAID, paid_at__gte=first, paid_at__lt=last))
    for invoice in paid.only("currency", "total_minor", "paid_at"):
        assert invoice.paid_at is not None  # filtered on it
        key = Month.of(invoice.paid_at).key
        if key in by_key:
            net = invoice.total_minor - invoice.credited  # type: ignore[attr-defined]
            table[invoice.currency][key].collected += net
    return {currency: list(rows.values()) for currency, rows in sorted(table.items())}


def credit_notes_in(month: Month) -> QuerySet[CreditNote]:
    return (
        CreditNote.objects.filter(issued_at__gte=month.start, issued_at__lt=month.end)
        .select_related("invoice__customer")
        .order_by("issued_at", "pk")
    )


def invoices_in(month: Month) -> QuerySet[Invoice]:
    """The month's invoices (by period start), with their customers and credited totals."""
    return (
        Invoice.objects.filter(period__start__gte=month.start, period__start__lt=month.end)
        .select_related("customer", "period")
        .annotate(credited=Coalesce(Sum("credit_notes__total_minor"), 0))
        .order_by("period__start", "pk")
    )


def lines_in(month: Month) -> QuerySet[InvoiceLine]:
    return (
        InvoiceLine.objects.filter(
            invoice__period__start__gte=month.start, invoice__period__start__lt=month.end
        )
        .select_related("invoice__customer", "meter")
        .annotate(credited=Coalesce(Sum("credit_lines__amount_minor"), 0))
        .order_by("invoice__period__start", "invoice_id", "position")
    )


def overview(*, now: datetime) -> dict[str, Any]:
    current = Month.of(now)
    months = [current, current.previous()]
    return {
        "now": now,
        "months": [
            {
                "month": month,
                "periods": period_figures(month, now=now),
                "invoices": invoice_figures(month, now=now),
            }
            for month in months
        ],
        "attention": attention_figures(),
        "upcoming": upcoming_finalizations(),
        "revenue": revenue_by_month(until=current),
        "backend": settings.BILLING_BACKEND,
    }
