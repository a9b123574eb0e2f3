"""The billing cycle in the admin: "Close now (if due)" on billing periods runs the cycle for
the selected periods (close, queue their summaries, finalize those reviewed, deliver);
"Close early" ends running periods now, with a reason (invoicing.services.subscriptions.
end_period_early says why the period ends rather than lending its window to the next).

The billing-period pages themselves are invoicing's (invoicing.admin.BillingPeriodAdmin);
this app registers them again with the action, because the cycle sits above invoicing and
notifications (see billing_cycle.services) and invoicing must not import it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import get_permission_codename
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone

from audit.services import record_audit
from billing_cycle import services
from billing_cycle.services import Outcome, Step
from invoicing import admin as invoicing_admin
from invoicing.models import BillingPeriod
from invoicing.services.subscriptions import (
    EARLY_CLOSE_REASON_MAX,
    EarlyCloseRefused,
    end_period_early,
)
from metering.localtime import customer_time

# The close outcome of a selected period, as the admin names it (and audits it).
OUTCOMES = {
    Outcome.DONE: "closed",
    Outcome.ALREADY: "already",
    Outcome.WAITING: "not_due",
    Outcome.FAILED: "failed",
}
CLOSE_MESSAGES = [
    ("closed", messages.SUCCESS, "Closed"),
    ("already", messages.INFO, "Already closed"),
    ("not_due", messages.WARNING, "Not due yet (or an earlier period is open)"),
    ("failed", messages.ERROR, "Failed, see the log"),
]


class CloseEarlyForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=EARLY_CLOSE_REASON_MAX,
        help_text="Recorded in the audit log.",
    )


class BillingPeriodAdmin(invoicing_admin.BillingPeriodAdmin):
    actions = ["close_now", "close_early"]

    @admin.action(description="Close early: end now (asks for a reason)", permissions=["close"])
    def close_early(
        self, request: HttpRequest, queryset: QuerySet[BillingPeriod]
    ) -> TemplateResponse | None:
        """End each selected running period now (the next period starts now and runs to the
        regular boundary); each then closes once its grace period has passed. First call: a
        page with the periods and a required reason; second call: do it, then report what was
        ended and what was refused, with why."""
        periods = list(queryset.select_related("customer").order_by("end", "pk"))
        form = CloseEarlyForm(request.POST if "post" in request.POST else None)
        if form.is_valid():
            ended, refused = [], []
            for period in periods:
                try:
                    done, following = end_period_early(
                        period_id=period.pk,
                        now=timezone.now(),
                        reason=form.cleaned_data["reason"],
                        user=request.user,
                    )
                except EarlyCloseRefused as exc:
                    refused.append(str(exc))
                    continue
                closes_at = done.end + timedelta(seconds=settings.BILLING_GRACE_PERIOD)
                ended.append(
                    f"{done} (closes after {customer_time(closes_at, done.customer)}; "
                    f"next period to {customer_time(following.end, done.customer)})"
                )
            if ended:
                self.message_user(request, f"Ended now: {'; '.join(ended)}", messages.SUCCESS)
            if refused:
                self.message_user(request, f"Refused: {'; '.join(refused)}", messages.WARNING)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Close periods early",
            "opts": self.opts,
            "periods": periods,
            "form": form,
            "grace": timedelta(seconds=settings.BILLING_GRACE_PERIOD),
            "action_name": "close_early",
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/invoicing/close_early.html", context)

    def has_close_permission(self, request: HttpRequest) -> bool:
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")

    @admin.action(description="Close now (if due)", permissions=["close"])
    def close_now(self, request: HttpRequest, queryset: QuerySet[BillingPeriod]) -> None:
        """Run the billing cycle for the selected periods: each one past its end plus the grace
        period closes (never twice), its summary is queued, a reviewed draft is finalized."""
        periods = list(queryset.select_related("customer").order_by("end", "pk"))
        report = services.run_billing_cycle(
            now=timezone.now(), period_ids=[period.pk for period in periods], explain=False
        )
        closes = {entry.period_id: entry for entry in report.select(step=Step.CLOSE)}
        outcomes: dict[str, list[str]] = {key: [] for key, _, _ in CLOSE_MESSAGES}
        for period in periods:
            entry = closes[period.pk]
            outcome = OUTCOMES[entry.outcome]
            data: dict[str, Any] = {"outcome": outcome}
            if entry.invoice_id is not None:
                data["invoice_id"] = entry.invoice_id
            if entry.outcome == Outcome.FAILED:
                data["error"] = entry.detail
            outcomes[outcome].append(str(period))
            # The close audits itself as the system; this entry says who asked for it.
            record_audit(
                action="admin.period_close_requested",
                obj=period,
                user=request.user,
                customer_external_id=period.customer.external_id,
                data=data,
            )
        for key, level, label in CLOSE_MESSAGES:
            if outcomes[key]:
                self.message_user(request, f"{label}: {', '.join(outcomes[key])}", level=level)
        finalized = report.select(step=Step.FINALIZE, outcome=Outcome.DONE)
        if finalized:
            done = ", ".join(str(entry) for entry in finalized)
            self.message_user(request, f"Finalized: {done}", level=messages.SUCCESS)
        for entry in report.failed:
            if entry.step != Step.CLOSE:
                self.message_user(request, f"{entry.step} failed: {entry}", level=messages.ERROR)


admin.site.unregister(BillingPeriod)
admin.site.register(BillingPeriod, BillingPeriodAdmin)
