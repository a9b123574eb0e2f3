"""Portal forms: sign-in limited to portal members, the budget in major units, the export range.

Amounts are typed in major units (dollars, yen) and converted exactly to integer minor units
with the currency's exponent; anything that would need rounding is refused, never rounded.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm, PasswordResetForm
from django.contrib.auth.models import User
from django.core.validators import MaxValueValidator, MinValueValidator

from billing_project.forms import BoundedTextFieldsMixin
from budgets import rules
from budgets.models import BudgetCap
from metering.currencies import CURRENCIES
from metering.models import PortalMembership
from portal.selectors import is_property_name

# Export dates: a day after the last still has a midnight in every zone (9999-12-31 has not).
EARLIEST_EXPORT_DATE = date(2000, 1, 1)
LATEST_EXPORT_DATE = date(2100, 12, 31)
MAX_ID = 2**63 - 1  # a bigint primary key
DAY_CHOICES = [(7, "Last 7 days"), (30, "Last 30 days"), (90, "Last 90 days")]


class PortalAuthenticationForm(BoundedTextFieldsMixin, AuthenticationForm):
    """Django's sign-in, refusing logins that belong to no customer (finance staff use /admin/)."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "no_portal_access": "This account has no access to the customer portal.",
    }

    def confirm_login_allowed(self, user: Any) -> None:
        super().confirm_login_allowed(user)
        if not PortalMembership.objects.filter(user_id=user.pk).exists():
            raise forms.ValidationError(
                self.error_messages["no_portal_access"], code="no_portal_access"
            )


class PortalPasswordResetForm(PasswordResetForm):
    """Reset mails go only to portal members: a staff address gets nothing from here."""

    def get_users(self, email: str) -> Iterator[User]:
        for user in super().get_users(email):
            if PortalMembership.objects.filter(user_id=user.pk).exists():
                yield user


def major_to_minor(text: str, currency: str) -> int:
    """ "1234.5" USD -> 123450; raises ValueError (with a message for people) when the text is
    not a positive amount with at most the currency's decimal places."""
    places = CURRENCIES[currency].exponent
    cleaned = text.strip().replace(",", "").replace("_", "")
    if not re.fullmatch(r"\d+(\.\d*)?|\.\d+", cleaned):
        raise ValueError("Enter an amount such as 250" + (".00" if places else "") + ".")
    try:
        amount = Decimal(cleaned)
        if amount.adjusted() > 20:
            raise ValueError("The amount is too large.")
        minor = amount.scaleb(places, context=decimal.Context(prec=60))
    except decimal.DecimalException:
        raise ValueError("Enter a valid amount.") from None
    if minor != minor.to_integral_value():
        if places == 0:
            raise ValueError(f"{currency} amounts are whole numbers (no decimal places).")
        raise ValueError(f"{currency} amounts have at most {places} decimal places.")
    if minor <= 0:
        raise ValueError("The cap must be greater than zero.")
    if minor > rules.MAX_CAP_MINOR:
        raise ValueError("The amount is too large.")
    return int(minor)


def minor_to_major_text(amount_minor: int, currency: str) -> str:
    """The form's initial value: 123450 USD -> "1234.50"."""
    places = CURRENCIES[currency].exponent
    return f"{Decimal(amount_minor).scaleb(-places):.{places}f}"


def parse_thresholds(text: str) -> list[int]:
    """ "50, 80 100" -> [50, 80, 100]; ValueError with a message for people otherwise (what
    makes thresholds valid is budgets.rules.thresholds_error)."""
    parts = [part for part in re.split(r"[\s,;]+", text.strip()) if part]
    values = []
    for part in parts:
        if not re.fullmatch(r"\d{1,3}%?", part):
            raise ValueError(f"“{part}” is not a whole percentage.")
        values.append(int(part.rstrip("%")))
    if (message := rules.thresholds_error(values)) is not None:
        raise ValueError(message)
    return sorted(values)


class BudgetForm(forms.Form):
    cap = forms.CharField(
        required=False,
        max_length=40,
        label="Cap per billing period",
        widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}),
    )
    thresholds = forms.CharField(
        max_length=60,
        label="Alert thresholds (percent of the cap)",
        help_text="Comma-separated whole percentages, e.g. 50, 80, 100. Each alerts once "
        "per period.",
    )
    action = forms.ChoiceField(
        choices=BudgetCap.Action.choices,
        widget=forms.RadioSelect,
        label="At the cap",
    )

    def __init__(self, *args: Any, currency: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.currency = currency
        places = CURRENCIES[currency].exponent
        example = "500" + ("." + "0" * places if places else "")
        self.fields["cap"].label = f"Cap per billing period ({currency})"
        self.fields["cap"].help_text = (
            f"In {currency}, e.g. {example}"
            + (f" (at most {places} decimal places)" if places else " (whole numbers)")
            + ". Leave empty for no cap."
        )

    def clean_cap(self) -> int | None:
        text = self.cleaned_data["cap"]
        if not text.strip():
            return None
        try:
            return major_to_minor(text, self.currency)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_thresholds(self) -> list[int]:
        try:
            return parse_thresholds(self.cleaned_data["thresholds"])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


class DashboardForm(forms.Form):
    """The dashboard's GET options; invalid values fall back to the defaults."""

    days = forms.TypedChoiceField(
        choices=DAY_CHOICES,
        coerce=int,
        required=False,
        empty_value=30,  # type: ignore[arg-type]  # the stubs allow only str | None; Django any value
        label="Chart range",
    )
    property = forms.CharField(
        required=False, max_length=64, label="Break down by property", empty_value="agent_id"
    )

    def clean_property(self) -> str:
        value = self.cleaned_data["property"].strip() or "agent_id"
        if not is_property_name(value):
            raise forms.ValidationError(
                "A property name has 1 to 64 letters, digits, and _ . : - characters, and is not "
                "a number."
            )
        return value


def _export_date(label: str) -> forms.DateField:
    bounds = {"min": EARLIEST_EXPORT_DATE.isoformat(), "max": LATEST_EXPORT_DATE.isoformat()}
    return forms.DateField(
        label=label,
        widget=forms.DateInput(attrs={"type": "date", **bounds}),
        validators=[MinValueValidator(EARLIEST_EXPORT_DATE), MaxValueValidator(LATEST_EXPORT_DATE)],
        error_messages={
            "min_value": f"Enter a day from {EARLIEST_EXPORT_DATE} to {LATEST_EXPORT_DATE}.",
            "max_value": f"Enter a day from {EARLIEST_EXPORT_DATE} to {LATEST_EXPORT_DATE}.",
        },
    )


class ExportRangeForm(forms.Form):
    """Export by local dates, both inclusive, between EARLIEST and LATEST_EXPORT_DATE."""

    start = _export_date("From (first day)")
    end = _export_date("To (last day)")

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        start: date | None = data.get("start")
        end: date | None = data.get("end")
        if start and end and end < start:
            self.add_error("end", "The last day is before the first day.")
        return data


class ExportPeriodForm(forms.Form):
    period = forms.IntegerField(min_value=1, max_value=MAX_ID, label="Billing period")
