"""Back office for unpriced usage (DESIGN 4a): the list with totals, and finance's two
decisions on a line, each through invoicing.services.unpriced (which audits them with the
user): bill it with a rule of its rate card (on the customer's next invoice), or waive it
with a reason. Registered by invoicing.admin.

Also the two columns that say which rule priced what (the invoice's lines and this list show
them): a line's dimension values and the rule of its rate card that priced it, both read from
the line's own record (`InvoiceLine.pricing`, written by the close)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html

from billing_project.db import DecimalSum
from invoicing.models import InvoiceLine, UnpricedLine, UnpricedResolution
from invoicing.pricing import PricingRecord
from invoicing.services import unpriced
from metering.dimensions import describe_values


@admin.display(description="dimension values")
def dimension_values(line: InvoiceLine) -> str:
    """The line's group ("model=large, token_type=output"); "-" for an ordinary price."""
    record = PricingRecord.from_json(line.pricing)
    if not record.dimensions:
        return "-"
    names = [name for name, _ in record.dimensions]
    return describe_values(names, tuple(value for _, value in record.dimensions))


@admin.display(description="priced by")
def priced_by(line: InvoiceLine) -> str:
    """The rate card rule that priced the line: its number and its match ("rule 2: model=
    large"; "rule 4: any other group" for the catch-all); "no rule (unpriced)" when none
    matched; "-" for a line of an ordinary price."""
    record = PricingRecord.from_json(line.pricing)
    if record.rule is None:
        return "no rule (unpriced)" if line.kind == InvoiceLine.Kind.UNPRICED else "-"
    match = ", ".join(f"{name}={value}" for name, value in record.rule) or "any other group"
    number = "rule" if record.rule_position is None else f"rule {record.rule_position}"
    return f"{number}: {match}"


class UnpricedActionForm(ActionForm):
    """The action bar's extra fields: the rule to bill with, the reason to waive for."""

    rule = forms.IntegerField(
        required=False, min_value=1, max_value=200, help_text="bill: rule number (from 1)"
    )
    reason = forms.CharField(required=False, max_length=500, help_text="waive: why")


class DecisionFilter(admin.SimpleListFilter):
    title = "decision"
    parameter_name = "decision"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("open", "Neither billed nor waived"), ("bill", "Billed"), ("waive", "Waived")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "open":
            return queryset.filter(resolution__isnull=True)
        if self.value() in ("bill", "waive"):
            return queryset.filter(resolution__action=self.value())
        return queryset


@admin.register(UnpricedLine)
class UnpricedLineAdmin(admin.ModelAdmin):
    action_form = UnpricedActionForm
    actions = ["bill_with_rule", "waive_with_reason"]
    list_display = [
        "description",
        "dimension_values",
        "customer_link",
        "period",
        "invoice_link",
        "quantity",
        "decision",
    ]
    list_filter = [DecisionFilter, "meter"]
    list_select_related = ["invoice__customer", "invoice__period", "meter", "resolution"]
    search_fields = ["=invoice__customer__external_id", "description"]
    change_list_template = "admin/invoicing/unpricedline/change_list.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[UnpricedLine]:
        return super().get_queryset(request).filter(kind=UnpricedLine.Kind.UNPRICED)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in UnpricedLine._meta.fields] + ["decision"]

    dimension_values = staticmethod(dimension_values)

    @admin.display(description="customer", ordering="invoice__customer__external_id")
    def customer_link(self, line: UnpricedLine) -> str:
        customer = line.invoice.customer
        url = reverse("admin:metering_customer_change", args=[customer.pk])
        return format_html('<a href="{}">{}</a>', url, customer.external_id)

    @admin.display(description="invoice")
    def invoice_link(self, line: UnpricedLine) -> str:
        invoice = line.invoice
        url = reverse("admin:invoicing_invoice_change", args=[invoice.pk])
        number = invoice.number or f"DRAFT #{invoice.pk}"
        return format_html('<a href="{}">{} line {}</a>', url, number, line.position)

    @admin.display(description="period")
    def period(self, line: UnpricedLine) -> str:
        return f"{line.invoice.period.start:%Y-%m-%d %H:%M} UTC"

    @admin.display(description="decision")
    def decision(self, line: UnpricedLine) -> str:
        found = UnpricedResolution.objects.filter(line_id=line.pk).first()
        if found is None:
            return format_html("<strong>{}</strong>", "open")
        if found.action == UnpricedResolution.Action.WAIVE:
            return f"waived: {found.reason}"
        state = "on an invoice" if found.billed_line_id else "for the next invoice"
        return f"billed with rule {found.rule_position}, {found.amount_minor} minor units ({state})"

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The list, with the totals of unpriced usage per meter and decision."""
        totals = (
            self.get_queryset(request)
            .values("meter__code", "resolution__action")
            .annotate(lines=Count("pk"), quantity=DecimalSum("quantity"))
            .order_by("meter__code", "resolution__action")
        )
        extra = {
            "unpriced_totals": [
                {
                    "meter": row["meter__code"],
                    "decision": row["resolution__action"] or "open",
                    "lines": row["lines"],
                    "quantity": row["quantity"],
                }
                for row in totals
            ],
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=extra)

    @admin.action(
        description="Bill with rule N of its rate card (next invoice)", permissions=["change"]
    )
    def bill_with_rule(self, request: HttpRequest, queryset: QuerySet[UnpricedLine]) -> None:
        rule = request.POST.get("rule", "")
        if not rule.isdigit():
            self.message_user(request, "Give the rule number to bill with.", level=messages.ERROR)
            return
        for line in queryset.order_by("pk"):
            try:
                found = unpriced.bill_unpriced_line(
                    line_id=line.pk, rule_position=int(rule), user=request.user
                )
            except unpriced.UnpricedActionInvalid as exc:
                self.message_user(request, f"{line}: {exc}", level=messages.ERROR)
                continue
            self.message_user(
                request,
                f"{line}: billed at {found.amount_minor} minor units on the next invoice.",
                level=messages.SUCCESS,
            )

    @admin.action(description="Waive (give the reason)", permissions=["change"])
    def waive_with_reason(self, request: HttpRequest, queryset: QuerySet[UnpricedLine]) -> None:
        reason = request.POST.get("reason", "")
        for line in queryset.order_by("pk"):
            try:
                unpriced.waive_unpriced_line(line_id=line.pk, reason=reason, user=request.user)
            except unpriced.UnpricedActionInvalid as exc:
                self.message_user(request, f"{line}: {exc}", level=messages.ERROR)
                continue
            self.message_user(request, f"{line}: waived.", level=messages.SUCCESS)
