"""Back office for finance staff: plans and prices, subscriptions, periods, invoices, aggregates.

Thin: every action calls a service in invoicing/services/ and never sets a status itself.
Services audit the transitions they make (with the user passed in); every other add, change,
delete and action is audited by the admin site itself (audit/audited_admin.py). Rows that the
books depend on are read-only: a plan version that a billing period uses, periods, invoices
and their lines, and aggregates. A period's "Close now" runs the billing cycle:
billing_cycle.admin adds it (and audits who asked, with the outcome).
"""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Exists, F, OuterRef, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from invoicing import (  # stripe_admin, credit_note_admin and unpriced_admin register pages
    credit_note_admin,
    selectors,
    stripe_admin,
    unpriced_admin,  # registers the unpriced usage pages
)
from invoicing.documents import document_filename, render_invoice_document, render_invoice_pdf
from invoicing.models import (
    BillingPeriod,
    Invoice,
    InvoiceLine,
    Price,
    PricePlan,
    PriceRate,
    PriceRateTier,
    PriceTier,
    Subscription,
)
from invoicing.pricing import price_spec
from invoicing.rate_cards import validate_rate_card
from invoicing.rating import PriceSpec, Tier, validate_price_spec
from invoicing.services import invoices, plans, subscriptions
from metering.currencies import format_minor, format_unit_amount
from metering.localtime import customer_time
from metering.models import UsageAggregate


def _has_model_perm(request: HttpRequest, opts: Any, action: str) -> bool:
    return request.user.has_perm(f"{opts.app_label}.{get_permission_codename(action, opts)}")


# --- Plans and prices -----------------------------------------------------------------------


class PlanVersionGuardMixin(admin.ModelAdmin):
    """Saves and deletes of a plan version, a price or (through its price) a tier first call
    plans.ensure_plan_version_editable on the version, inside the admin's transaction: the
    permissions below hide the forms of a version in use, and this refuses the rare save that
    raced a new period (shown as an error; the transaction rolls back, nothing is saved)."""

    def _plan_id(self, obj: Any) -> int | None:
        return obj.pk if isinstance(obj, PricePlan) else obj.plan_id

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        plan_id = self._plan_id(obj)
        if plan_id is not None:
            plans.ensure_plan_version_editable(plan_id=plan_id)
        super().save_model(request, obj, form, change)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        plan_id = self._plan_id(obj)
        assert plan_id is not None  # a row being deleted is stored
        plans.ensure_plan_version_editable(plan_id=plan_id)
        super().delete_model(request, obj)

    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return super().changeform_view(request, *args, **kwargs)
        except plans.PlanVersionInUse as exc:
            self.message_user(request, str(exc), level=messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def delete_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return super().delete_view(request, *args, **kwargs)
        except plans.PlanVersionInUse as exc:
            self.message_user(request, str(exc), level=messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())


SPEC_FIELDS = [
    "model",
    "unit_amount_minor",
    "package_size",
    "package_amount_minor",
    "included_quantity",
    "minimum_minor",
]


def _spec_from_fields(data: dict[str, Any], tiers: tuple[Tier, ...]) -> PriceSpec:
    """The rating engine's view of a price form's cleaned data (None fields stay None)."""
    return PriceSpec(
        model=data.get("model") or "",
        unit_amount_minor=data.get("unit_amount_minor"),
        tiers=tiers,
        package_size=data.get("package_size"),
        package_amount_minor=data.get("package_amount_minor"),
        included_quantity=data["included_quantity"],
        minimum_minor=data["minimum_minor"],
    )


def _tiers_summary(price: Price | PriceRate, currency: str) -> str:
    parts = []
    for tier in price.tiers.all():
        bound = "∞" if tier.up_to is None else f"{tier.up_to.normalize():,f}"
        text = f"≤ {bound}: {format_unit_amount(tier.unit_amount_minor, currency)}"
        if tier.flat_amount_minor:
            text += f" + {format_minor(tier.flat_amount_minor, currency)}"
        parts.append(text)
    return "; ".join(parts)


class PriceInlineForm(forms.ModelForm):
    """A price edited in its plan's page: tiers cannot be edited here (no nested inlines), so
    the price is validated with the tiers it already has."""

    class Meta:
        model = Price
        fields = ["meter", *SPEC_FIELDS]

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if self.errors:
            return data  # field errors first; the spec cannot be built yet
        stored = price_spec(self.instance).tiers if self.instance.pk else ()
        problems = validate_price_spec(_spec_from_fields(data, stored))
        if problems and data.get("model") in ("graduated", "volume") and not stored:
            problems.append("add graduated and volume prices from the Price page, with tiers")
        if problems:
            raise ValidationError(problems)
        return data


class PriceInline(admin.TabularInline):
    model = Price
    form = PriceInlineForm
    extra = 0
    show_change_link = True
    readonly_fields = ["tiers"]
    fields = [*PriceInlineForm.Meta.fields, "tiers"]

    @admin.display(description="tiers")
    def tiers(self, price: Price) -> str:
        if price.pk is None:
            return ""
        return _tiers_summary(price, price.plan.currency)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Price]:
        # Rate cards (DESIGN 4a) are shown on their Price page, rules read-only.
        return super().get_queryset(request).exclude(rates__isnull=False)

    def has_add_permission(self, request: HttpRequest, obj: PricePlan | None = None) -> bool:
        return super().has_add_permission(request, obj) and not selectors.plan_in_use(plan=obj)

    def has_change_permission(self, request: HttpRequest, obj: PricePlan | None = None) -> bool:
        return super().has_change_permission(request, obj) and not selectors.plan_in_use(plan=obj)

    def has_delete_permission(self, request: HttpRequest, obj: PricePlan | None = None) -> bool:
        return super().has_delete_permission(request, obj) and not selectors.plan_in_use(plan=obj)


class PricePlanForm(forms.ModelForm):
    class Meta:
        model = PricePlan
        fields = ["code", "name", "currency", "interval"]

    def clean_code(self) -> str:
        code = self.cleaned_data["code"]
        if self.instance.pk is None and PricePlan.objects.filter(code=code).exists():
            raise ValidationError(
                f"Plan {code} exists already. To change it, use “Copy as new version” on its "
                "latest version in the list: subscribers move to a new version from their "
                "next period."
            )
        return code


@admin.register(PricePlan)
class PricePlanAdmin(PlanVersionGuardMixin, admin.ModelAdmin):
    form = PricePlanForm
    inlines = [PriceInline]
    list_display = ["code", "version", "name", "currency", "interval", "in_use", "created_at"]
    list_filter = ["currency", "interval"]
    search_fields = ["code", "name"]
    actions = ["copy_as_new_version"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[PricePlan]:
        used = BillingPeriod.objects.filter(plan=OuterRef("pk"))
        return super().get_queryset(request).annotate(used=Exists(used))

    @admin.display(boolean=True, description="used by a period")
    def in_use(self, plan: PricePlan) -> bool:
        used = getattr(plan, "used", None)
        return selectors.plan_in_use(plan=plan) if used is None else used

    @admin.display(description="status")
    def edit_status(self, plan: PricePlan) -> str:
        if selectors.plan_in_use(plan=plan):
            return "Used by billing periods: read-only. Use “Copy as new version” to change it."
        return "Not used by any period yet: editable."

    def get_readonly_fields(self, request: HttpRequest, obj: PricePlan | None = None) -> list[str]:
        if obj is None:
            return ["version"]
        fixed = ["version", "edit_status", "code", "created_at"]
        if Subscription.objects.filter(plan=obj).exists():
            fixed.append("currency")  # subscribers pay in it
        return fixed

    def get_fields(self, request: HttpRequest, obj: PricePlan | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("code", "version", "name", "currency", "interval")
        return ("edit_status", "code", "version", "name", "currency", "interval", "created_at")

    def has_change_permission(self, request: HttpRequest, obj: PricePlan | None = None) -> bool:
        return super().has_change_permission(request, obj) and not selectors.plan_in_use(plan=obj)

    def has_delete_permission(self, request: HttpRequest, obj: PricePlan | None = None) -> bool:
        return False  # subscriptions and periods refer to versions; a new version replaces one

    @admin.action(description="Copy as new version", permissions=["add"])
    def copy_as_new_version(self, request: HttpRequest, queryset: QuerySet[PricePlan]) -> None:
        selected = list(queryset.order_by("code", "version"))
        codes = [plan.code for plan in selected]
        if len(set(codes)) != len(codes):
            self.message_user(
                request,
                "Select one version per plan code: each copy becomes the newest version.",
                level=messages.ERROR,
            )
            return
        for plan in selected:
            stored = plan.prices.select_related("meter").prefetch_related("tiers", "rates__tiers")
            prices = [plans.stored_price_input(p) for p in stored]
            try:
                created = plans.create_plan_version(
                    code=plan.code,
                    name=plan.name,
                    currency=plan.currency,
                    interval=plan.interval,
                    prices=prices,
                    user=request.user,
                )
            except plans.PlanInvalid as exc:
                self.message_user(request, f"{plan}: {exc}", level=messages.ERROR)
                continue
            self.message_user(
                request,
                f"Created {created} from version {plan.version}. Its subscribers move to it from "
                "their next period; edit its prices before then.",
                level=messages.SUCCESS,
            )


class PriceTierFormSet(BaseInlineFormSet):
    """Validates the price being saved together with its tiers, as the rating engine will see
    them, so a price that cannot be rated is never stored."""

    def clean(self) -> None:
        super().clean()
        if any(form.errors for form in self.forms) or self.non_form_errors():
            return
        kept = [
            form.cleaned_data
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE")
        ]
        kept.sort(key=lambda data: data["position"])
        tiers = tuple(
            Tier(
                up_to=data.get("up_to"),
                unit_amount_minor=data["unit_amount_minor"],
                flat_amount_minor=data["flat_amount_minor"],
            )
            for data in kept
        )
        price: Price = self.instance  # carries the price form's cleaned values
        fields = {name: getattr(price, name) for name in SPEC_FIELDS}
        problems = validate_price_spec(_spec_from_fields(fields, tiers))
        if problems:
            raise ValidationError(problems)


class PriceTierInline(admin.TabularInline):
    model = PriceTier
    formset = PriceTierFormSet
    fields = ["position", "up_to", "unit_amount_minor", "flat_amount_minor"]
    extra = 1

    def has_add_permission(self, request: HttpRequest, obj: Price | None = None) -> bool:
        return super().has_add_permission(request, obj) and not _price_locked(obj)

    def has_change_permission(self, request: HttpRequest, obj: Price | None = None) -> bool:
        return super().has_change_permission(request, obj) and not _price_locked(obj)

    def has_delete_permission(self, request: HttpRequest, obj: Price | None = None) -> bool:
        return super().has_delete_permission(request, obj) and not _price_locked(obj)


# --- Rate cards (DESIGN 4a) ------------------------------------------------------------------
#
# A rate card's Price page edits its dimensions and its rules inline, in order (position); each
# rule's tiers are edited on the rule's own page (the inline's change link). Every save is
# validated by the one home of the rules, rate_cards.validate_rate_card, with the whole card as
# it would be stored, and its messages are shown on the field they name. A version in use is
# read-only (the permissions below) and refused again inside the save's transaction
# (PlanVersionGuardMixin). The admin site audits every save with its inline rows.

RULE_POSITIONS = 999  # the highest position a rule may be given in the admin
_SHIFT = 10_000  # stored positions move out of the way while the rules are stored in order
_RULE_PATH = re.compile(r"^rates\[(\d+)\]\.?(.*)$")
_TIER_PATH = re.compile(r"^tiers\[(\d+)\]\.?(.*)$")
_RULE_FORM = "_rule_admin_form"  # the rule page's form, on its instance (see PriceRateAdmin)
_NEEDS_TIERS = (
    "; a graduated or volume rule is added as per unit first, then given its model and tiers "
    "on the rule's page (its “Change” link)"
)


def _rule_field(rest: str, fields: Any) -> str | None:
    """The form field a validate_rate_card path names inside a rule ("match.model" -> match,
    "unit_amount_minor" -> itself); None: the rule as a whole (its tiers)."""
    name = rest.split(".", 1)[0].split("[", 1)[0]
    return name if name in fields else None


def _stored_tiers(rate: PriceRate) -> tuple[Tier, ...]:
    return price_spec(rate).tiers if rate.pk else ()


def _dimensions_errors(dimensions: object) -> list[str]:
    """The problems with a rate card's dimension names (validate_rate_card's, by index)."""
    if not isinstance(dimensions, list):
        return ['a list of 1 to 3 property names, such as ["model", "token_type"]']
    problems = validate_rate_card(dimensions, [])
    return [
        message if path == "dimensions" else f"{path}: {message}"
        for path, message in problems.items()
        if path.startswith("dimensions")
    ]


class RateCardPriceForm(forms.ModelForm):
    """The Price page of a rate card: its meter and its dimension names (the rules inline)."""

    class Meta:
        model = Price
        fields = ["plan", "meter", "dimensions"]
        widgets = {"dimensions": forms.Textarea(attrs={"rows": 1, "cols": 40})}
        help_texts = {
            "dimensions": 'The event properties it prices by, e.g. ["model", "token_type"].'
        }

    def clean_dimensions(self) -> object:
        dimensions = self.cleaned_data.get("dimensions")
        problems = _dimensions_errors(dimensions)
        if problems:
            raise ValidationError(problems)
        return dimensions

    def clean(self) -> dict[str, Any]:
        super().clean()
        _one_price_per_meter(self)
        return self.cleaned_data


class PriceRateForm(forms.ModelForm):
    position = forms.IntegerField(min_value=1, max_value=RULE_POSITIONS)

    class Meta:
        model = PriceRate
        fields = ["position", "match", *SPEC_FIELDS]
        widgets = {"match": forms.Textarea(attrs={"rows": 2, "cols": 30})}
        help_texts = {"match": '{"model": "large"}; {} matches every other group (last only)'}

    def clean_match(self) -> object:
        match = self.cleaned_data.get("match")
        if match is None:
            return {}
        if not isinstance(match, dict):
            raise ValidationError('an object such as {"model": "large"}; {} for the catch-all')
        return match


class PriceRateFormSet(BaseInlineFormSet):
    """A rate card's rules as the Price page posts them, validated as the card that would be
    stored (rate_cards.validate_rate_card), and stored in the order of their positions."""

    def clean(self) -> None:
        super().clean()  # two rules at one position are refused here (validate_unique)
        self.ordered: list[forms.ModelForm] = []
        if any(form.errors for form in self.forms) or self.non_form_errors():
            return
        kept = [
            form for form in self.forms if form.cleaned_data and not form.cleaned_data.get("DELETE")
        ]
        kept.sort(key=lambda form: form.cleaned_data["position"])
        price: Price = self.instance  # carries the price form's cleaned dimensions
        dimensions = price.dimensions if isinstance(price.dimensions, list) else []
        rules = [
            (
                form.cleaned_data.get("match") or {},
                _spec_from_fields(form.cleaned_data, _stored_tiers(form.instance)),
            )
            for form in kept
        ]
        problems = []
        for where, message in validate_rate_card(dimensions, rules).items():
            found = _RULE_PATH.match(where)
            if where.startswith("dimensions"):
                continue  # the price form shows these on its field
            if found is None:
                problems.append(message)
                continue
            form = kept[int(found.group(1))]
            rest = found.group(2)
            field = _rule_field(rest, form.fields)
            if rest.startswith("tiers") or field is None:
                if not form.instance.pk or not form.instance.tiers.exists():
                    message += _NEEDS_TIERS
                field = "model"
            form.add_error(field, message)
        if problems:
            raise ValidationError(problems)
        self.ordered = kept

    def save(self, commit: bool = True) -> list[Any]:
        """Store the rules at positions 1..n in the order asked: rule N is the Nth to match
        (as the unpriced list's "bill with rule N" counts them)."""
        if not commit:
            return super().save(commit)
        PriceRate.objects.filter(price=self.instance).update(position=F("position") + _SHIFT)
        for rank, form in enumerate(self.ordered, start=1):
            form.instance.position = rank
        saved = super().save(commit)
        for rank, form in enumerate(self.ordered, start=1):
            if form.instance.pk is not None and not form.has_changed():
                PriceRate.objects.filter(pk=form.instance.pk).update(position=rank)
        return saved


class PriceRateInline(admin.TabularInline):
    """A rate card's rules in order (DESIGN 4a), editable while no period uses the version;
    each rule's tiers are edited on its own page."""

    model = PriceRate
    form = PriceRateForm
    formset = PriceRateFormSet
    extra = 0
    show_change_link = True
    fields = ("position", "match", *SPEC_FIELDS, "tiers")
    readonly_fields = ("tiers",)
    verbose_name = "rule"

    @admin.display(description="tiers")
    def tiers(self, rate: PriceRate) -> str:
        if rate.pk is None:
            return ""
        return _tiers_summary(rate, rate.price.plan.currency) or "-"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_add_permission(request, obj) and not _version_locked(obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and not _version_locked(obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and not _version_locked(obj)


def _version_locked(price: Price | None) -> bool:
    """A stored price whose plan version a billing period uses: read-only."""
    return price is not None and price.pk is not None and selectors.plan_in_use(plan=price.plan)


class PriceRateRuleForm(forms.ModelForm):
    """A rule on its own page: its match and price fields (its place is set on the price's
    page)."""

    class Meta:
        model = PriceRate
        fields = ["match", *SPEC_FIELDS]
        widgets = PriceRateForm.Meta.widgets
        help_texts = PriceRateForm.Meta.help_texts

    clean_match = PriceRateForm.clean_match


class PriceRateTierFormSet(BaseInlineFormSet):
    """A rule's tiers, validated with the rule's posted fields as part of its whole rate card
    (rate_cards.validate_rate_card); each message is shown on the field it names."""

    def clean(self) -> None:
        super().clean()
        rate: PriceRate = self.instance  # carries the rule form's cleaned values
        form = getattr(rate, _RULE_FORM, None)
        if form is None or any(f.errors for f in self.forms) or self.non_form_errors():
            return  # the rule's own field errors first
        kept = [f for f in self.forms if f.cleaned_data and not f.cleaned_data.get("DELETE")]
        kept.sort(key=lambda f: f.cleaned_data["position"])
        tiers = tuple(
            Tier(
                up_to=f.cleaned_data.get("up_to"),
                unit_amount_minor=f.cleaned_data["unit_amount_minor"],
                flat_amount_minor=f.cleaned_data["flat_amount_minor"],
            )
            for f in kept
        )
        spec = _spec_from_fields({name: getattr(rate, name) for name in SPEC_FIELDS}, tiers)
        stored = sorted(rate.price.rates.prefetch_related("tiers"), key=lambda r: r.position)
        index = next(i for i, other in enumerate(stored) if other.pk == rate.pk)
        rules = [
            (rate.match or {}, spec) if i == index else (other.match, price_spec(other))
            for i, other in enumerate(stored)
        ]
        problems = []
        for where, message in validate_rate_card(rate.price.dimensions, rules).items():
            found = _RULE_PATH.match(where)
            if found is None or int(found.group(1)) != index:
                problems.append(f"{where}: {message}")  # another rule (stored invalid)
                continue
            rest = found.group(2)
            tier = _TIER_PATH.match(rest)
            if tier is not None and int(tier.group(1)) < len(kept):
                row = kept[int(tier.group(1))]
                row.add_error(_rule_field(tier.group(2), row.fields), message)
            elif rest.startswith("tiers") or _rule_field(rest, form.fields) is None:
                problems.append(message)
            else:
                form.add_error(_rule_field(rest, form.fields), message)
                problems.append(f"the rule's fields: {message}")
        if problems:
            raise ValidationError(problems)


class PriceRateTierInline(admin.TabularInline):
    model = PriceRateTier
    formset = PriceRateTierFormSet
    fields = ["position", "up_to", "unit_amount_minor", "flat_amount_minor"]
    extra = 1

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_add_permission(request, obj) and not _rule_locked(obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and not _rule_locked(obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and not _rule_locked(obj)


def _rule_locked(rate: PriceRate | None) -> bool:
    return rate is not None and rate.pk is not None and _version_locked(rate.price)


@admin.register(PriceRate)
class PriceRateAdmin(PlanVersionGuardMixin, admin.ModelAdmin):
    """A rule's page: its match, price fields and tiers. Reached from its price's page (not
    listed on the index); rules are added, ordered and deleted there."""

    form = PriceRateRuleForm
    inlines = [PriceRateTierInline]
    list_display = ["__str__", "price"]
    list_select_related = ["price__plan", "price__meter"]
    fields = ["price", "position", "match", *SPEC_FIELDS]
    readonly_fields = ["price", "position"]

    def _plan_id(self, obj: Any) -> int | None:
        return obj.price.plan_id

    def get_model_perms(self, request: HttpRequest) -> dict[str, bool]:
        return {}  # not on the index: a rule is reached from its rate card's page

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        rate = super().save_form(request, form, change)
        setattr(rate, _RULE_FORM, form)  # its tiers' formset reports rule fields on it
        return rate

    def response_change(self, request: HttpRequest, obj: PriceRate) -> HttpResponse:
        if "_continue" in request.POST:
            return super().response_change(request, obj)
        self.message_user(request, f"Saved {obj}.", level=messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:invoicing_price_change", args=[obj.price_id]))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: PriceRate | None = None) -> bool:
        return super().has_change_permission(request, obj) and not _rule_locked(obj)

    def has_delete_permission(self, request: HttpRequest, obj: PriceRate | None = None) -> bool:
        return False


def _is_rate_card(price: Price | None) -> bool:
    return price is not None and price.pk is not None and bool(price.dimensions)


def _price_locked(price: Price | None) -> bool:
    return _version_locked(price)


class PriceForm(forms.ModelForm):
    class Meta:
        model = Price
        fields = ["plan", *PriceInlineForm.Meta.fields]

    def clean(self) -> dict[str, Any]:
        super().clean()
        _one_price_per_meter(self)
        return self.cleaned_data


def _one_price_per_meter(form: forms.ModelForm) -> None:
    """The plan is read-only once the price exists, so Django skips the (plan, meter)
    uniqueness check; make it here instead of failing on the constraint."""
    meter = form.cleaned_data.get("meter")
    if form.instance.pk and meter is not None:
        others = Price.objects.filter(plan_id=form.instance.plan_id, meter=meter)
        if others.exclude(pk=form.instance.pk).exists():
            form.add_error("meter", f"{meter} is priced already in this plan")


@admin.register(Price)
class PriceAdmin(PlanVersionGuardMixin, admin.ModelAdmin):
    form = PriceForm
    inlines = [PriceTierInline]

    def get_inlines(self, request: HttpRequest, obj: Price | None) -> list[Any]:
        """A rate card's rules instead of tiers: its rules carry the tiers."""
        if _is_rate_card(obj):
            return [PriceRateInline]
        return list(super().get_inlines(request, obj))

    def get_form(
        self, request: HttpRequest, obj: Price | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        """A rate card's page edits its dimensions, not the fields of an ordinary price."""
        if _is_rate_card(obj):
            kwargs["form"] = RateCardPriceForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Price | None = None) -> Any:
        if _is_rate_card(obj):
            return ["plan", "meter", "dimensions"]
        return super().get_fields(request, obj)

    list_display = ["plan", "meter", "model", "included_quantity", "minimum_minor"]
    list_filter = ["plan__code", "model"]
    list_select_related = ["plan", "meter"]
    search_fields = ["plan__code", "meter__code"]

    def get_readonly_fields(self, request: HttpRequest, obj: Price | None = None) -> list[str]:
        return ["plan"] if obj is not None else []

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "plan":
            used = BillingPeriod.objects.filter(plan=OuterRef("pk"))
            kwargs["queryset"] = PricePlan.objects.exclude(Exists(used))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # bulk delete would skip the in-use check
        return actions

    def has_change_permission(self, request: HttpRequest, obj: Price | None = None) -> bool:
        return super().has_change_permission(request, obj) and not _price_locked(obj)

    def has_delete_permission(self, request: HttpRequest, obj: Price | None = None) -> bool:
        return super().has_delete_permission(request, obj) and not _price_locked(obj)


# --- Subscriptions --------------------------------------------------------------------------


class SubscriptionForm(forms.ModelForm):
    class Meta:
        model = Subscription
        fields = ["customer", "plan"]

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        customer = data.get("customer") or getattr(self.instance, "customer", None)
        plan = data.get("plan")
        if customer is not None and plan is not None and plan.currency != customer.currency:
            self.add_error(
                "plan",
                f"{plan} bills in {plan.currency} but the customer pays in {customer.currency}",
            )
        return data


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    """Saving goes through `subscribe_customer`, which audits it: a new subscription opens its
    first period now; a new plan applies from the next period."""

    form = SubscriptionForm
    list_display = ["customer", "plan", "anchor", "started_at", "periods_until"]
    list_filter = ["plan__code"]
    list_select_related = ["customer", "plan"]
    search_fields = ["customer__external_id", "customer__name"]

    def get_fields(self, request: HttpRequest, obj: Subscription | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("customer", "plan")
        return ("customer", "plan", "anchor", "started_at", "periods_until")

    def get_readonly_fields(
        self, request: HttpRequest, obj: Subscription | None = None
    ) -> list[str]:
        if obj is None:
            return []
        return ["customer", "anchor", "started_at", "periods_until"]

    def save_model(
        self, request: HttpRequest, obj: Subscription, form: forms.ModelForm, change: bool
    ) -> None:
        customer = obj.customer if change else form.cleaned_data["customer"]
        saved = subscriptions.subscribe_customer(
            customer=customer,
            plan=form.cleaned_data["plan"],
            now=timezone.now(),
            user=request.user,
        )
        obj.pk = saved.pk  # the admin's redirect and messages use the saved row
        obj.anchor, obj.started_at = saved.anchor, saved.started_at

    def has_delete_permission(self, request: HttpRequest, obj: Subscription | None = None) -> bool:
        return False


# --- Billing periods ------------------------------------------------------------------------


@admin.register(BillingPeriod)
class BillingPeriodAdmin(admin.ModelAdmin):
    list_display = [
        "customer",
        "plan",
        "local_start",
        "local_end",
        "status",
        "closed_at",
        "invoice_link",
    ]
    list_filter = ["status", "customer", "plan"]
    list_select_related = ["customer", "plan", "invoice"]
    date_hierarchy = "start"
    search_fields = ["customer__external_id"]
    fields = [
        "customer",
        "plan",
        "local_start",
        "local_end",
        "start",
        "end",
        "status",
        "closed_at",
        "invoice_link",
    ]
    readonly_fields = ["local_start", "local_end", "invoice_link"]
    # "Close now (if due)" runs the billing cycle, which sits above invoicing: billing_cycle.admin
    # registers this page again with that action.

    @admin.display(description="start (customer's zone)", ordering="start")
    def local_start(self, period: BillingPeriod) -> str:
        return customer_time(period.start, period.customer)

    @admin.display(description="end (customer's zone)", ordering="end")
    def local_end(self, period: BillingPeriod) -> str:
        return customer_time(period.end, period.customer)

    @admin.display(description="invoice")
    def invoice_link(self, period: BillingPeriod) -> str:
        invoice = getattr(period, "invoice", None)
        if invoice is None:
            return "-"
        url = reverse("admin:invoicing_invoice_change", args=[invoice.pk])
        return format_html('<a href="{}">{}</a>', url, invoice)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: BillingPeriod | None = None) -> bool:
        return False  # periods change only by closing (the billing cycle's action)

    def has_delete_permission(self, request: HttpRequest, obj: BillingPeriod | None = None) -> bool:
        return False


# --- Invoices -------------------------------------------------------------------------------


class InvoiceLineInline(admin.TabularInline):
    """Lines are written only by the close: always read-only."""

    model = InvoiceLine
    fields = readonly_fields = (
        "position",
        "kind",
        "meter",
        "description",
        "dimension_values",
        "priced_by",
        "quantity",
        "amount",
        "source_period",
        "stripe_item_link",
    )
    stripe_item_link = staticmethod(stripe_admin.stripe_item_link)
    dimension_values = staticmethod(unpriced_admin.dimension_values)
    priced_by = staticmethod(unpriced_admin.priced_by)
    extra = 0
    can_delete = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[InvoiceLine]:
        return super().get_queryset(request).select_related("invoice", "meter", "source_period")

    @admin.display(description="amount")
    def amount(self, line: InvoiceLine) -> str:
        return format_minor(line.amount_minor, line.invoice.currency)

    def has_add_permission(self, request: HttpRequest, obj: Invoice | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Invoice | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Invoice | None = None) -> bool:
        return False


class VoidInvoicesForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=1000,
        help_text="Recorded on the invoice and in the audit log.",
    )


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    list_display = [
        "display_number",
        "customer",
        "period_start",
        "period_end",
        "status",
        "total",
        "created_at",
        "document_link",
    ]
    list_filter = ["status", "customer", ("period__start", admin.DateFieldListFilter)]
    list_select_related = ["customer", "period"]
    search_fields = ["number", "customer__external_id"]
    inlines = [InvoiceLineInline]
    fields = readonly_fields = (
        "display_number",
        "customer",
        "period",
        "period_start",
        "period_end",
        "status",
        "currency",
        "total",
        "document_link",
        "credit_notes",
        "created_local",
        "summary_sent_local",
        "finalize_after_local",
        "finalized_local",
        "due_local",
        "paid_local",
        "voided_local",
        "void_reason",
        "stripe_invoice_link",
        "stripe_delivery_status",
        "stripe_hosted_invoice_url",
    )
    actions = [
        "finalize",
        "mark_paid",
        "mark_uncollectible",
        "void_invoices",
        stripe_admin.retry_stripe_delivery,
    ]
    stripe_invoice_link = staticmethod(stripe_admin.stripe_invoice_link)
    stripe_delivery_status = staticmethod(stripe_admin.stripe_delivery_status)
    credit_notes = staticmethod(credit_note_admin.credit_notes_of)

    @admin.display(description="number", ordering="number")
    def display_number(self, invoice: Invoice) -> str:
        return invoice.number or f"DRAFT #{invoice.pk}"

    @admin.display(description="period start (customer's zone)", ordering="period__start")
    def period_start(self, invoice: Invoice) -> str:
        return customer_time(invoice.period.start, invoice.customer)

    @admin.display(description="period end (customer's zone)", ordering="period__end")
    def period_end(self, invoice: Invoice) -> str:
        return customer_time(invoice.period.end, invoice.customer)

    @admin.display(description="created")
    def created_local(self, invoice: Invoice) -> str:
        return customer_time(invoice.created_at, invoice.customer)

    @admin.display(description="summary sent")
    def summary_sent_local(self, invoice: Invoice) -> str:
        return customer_time(invoice.summary_sent_at, invoice.customer) or "-"

    @admin.display(description="finalize after (end of the review period)")
    def finalize_after_local(self, invoice: Invoice) -> str:
        return customer_time(invoice.finalize_after, invoice.customer)

    @admin.display(description="issued")
    def finalized_local(self, invoice: Invoice) -> str:
        return customer_time(invoice.finalized_at, invoice.customer) or "-"

    @admin.display(description="due")
    def due_local(self, invoice: Invoice) -> str:
        return customer_time(invoice.due_at, invoice.customer) or "-"

    @admin.display(description="paid")
    def paid_local(self, invoice: Invoice) -> str:
        return customer_time(invoice.paid_at, invoice.customer) or "-"

    @admin.display(description="voided")
    def voided_local(self, invoice: Invoice) -> str:
        return customer_time(invoice.voided_at, invoice.customer) or "-"

    @admin.display(description="total", ordering="total_minor")
    def total(self, invoice: Invoice) -> str:
        return format_minor(invoice.total_minor, invoice.currency)

    @admin.display(description="document")
    def document_link(self, invoice: Invoice) -> str:
        url = reverse("admin:invoicing_invoice_document", args=[invoice.pk])
        pdf = reverse("admin:invoicing_invoice_pdf", args=[invoice.pk])
        return format_html(
            '<a href="{}" target="_blank" rel="noopener">View document</a> · '
            '<a href="{}" class="invoice-pdf">PDF</a>',
            url,
            pdf,
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Invoice | None = None) -> bool:
        return False  # an invoice changes only through its transitions (the actions)

    def has_delete_permission(self, request: HttpRequest, obj: Invoice | None = None) -> bool:
        return False

    def has_transition_permission(self, request: HttpRequest) -> bool:
        return _has_model_perm(request, self.opts, "change")

    def get_urls(self) -> list[Any]:
        document = path(
            "<path:object_id>/document/",
            self.admin_site.admin_view(self.document_view),
            name="invoicing_invoice_document",
        )
        pdf = path(
            "<path:object_id>/pdf/",
            self.admin_site.admin_view(self.pdf_view),
            name="invoicing_invoice_pdf",
        )
        return [document, pdf, *credit_note_admin.invoice_urls(self), *super().get_urls()]

    def pdf_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The invoice document as a PDF download (staff with view permission)."""
        invoice = self.get_object(request, unquote(object_id))
        if invoice is None:
            raise Http404("no such invoice")
        if not self.has_view_permission(request, invoice):
            raise PermissionDenied
        response = HttpResponse(render_invoice_pdf(invoice), content_type="application/pdf")
        filename = document_filename(invoice, "pdf")
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response

    def document_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The print-ready invoice document (staff only, with view permission)."""
        invoice = self.get_object(request, unquote(object_id))
        if invoice is None:
            raise Http404("no such invoice")
        if not self.has_view_permission(request, invoice):
            raise PermissionDenied
        response = HttpResponse(render_invoice_document(invoice))
        # The page is self-contained: refuse anything it might try to load.
        response["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
        return response

    def _apply(self, request: HttpRequest, queryset: QuerySet[Invoice], to: str, call: Any) -> None:
        """Run one transition service per invoice; report what changed and what was refused."""
        done, unchanged = [], []
        for invoice in queryset.order_by("pk"):
            if invoice.status == to:
                unchanged.append(str(invoice))
                continue
            try:
                result = call(invoice_id=invoice.pk, now=timezone.now(), user=request.user)
            except invoices.TransitionNotAllowed as exc:
                self.message_user(request, str(exc), level=messages.ERROR)
                continue
            done.append(str(result))
        label = Invoice.Status(to).label.lower()
        if done:
            self.message_user(request, f"Now {label}: {', '.join(done)}", level=messages.SUCCESS)
        if unchanged:
            self.message_user(request, f"Already {label}: {', '.join(unchanged)}")

    @admin.action(description="Finalize (assign numbers)", permissions=["transition"])
    def finalize(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        self._apply(request, queryset, Invoice.Status.FINALIZED, invoices.finalize_invoice)

    @admin.action(description="Mark paid", permissions=["transition"])
    def mark_paid(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        self._apply(request, queryset, Invoice.Status.PAID, invoices.mark_invoice_paid)

    @admin.action(description="Mark uncollectible", permissions=["transition"])
    def mark_uncollectible(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        self._apply(
            request, queryset, Invoice.Status.UNCOLLECTIBLE, invoices.mark_invoice_uncollectible
        )

    @admin.action(description="Void (asks for a reason)", permissions=["transition"])
    def void_invoices(
        self, request: HttpRequest, queryset: QuerySet[Invoice]
    ) -> TemplateResponse | None:
        """First call: a page listing the invoices with a required reason. Second call (the
        page's form, marked with `post`): void each one with that reason."""
        selected = list(queryset.select_related("customer", "period").order_by("pk"))
        form = VoidInvoicesForm(request.POST if "post" in request.POST else None)
        if form.is_valid():
            reason = form.cleaned_data["reason"]

            def void(**kwargs: Any) -> Invoice:
                return invoices.void_invoice(reason=reason, **kwargs)

            self._apply(request, queryset, Invoice.Status.VOID, void)
            return None  # back to the list
        context = {
            **self.admin_site.each_context(request),
            "title": "Void invoices",
            "opts": self.opts,
            "invoices": [
                (invoice, format_minor(invoice.total_minor, invoice.currency))
                for invoice in selected
            ],
            "form": form,
            "action_name": "void_invoices",
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/invoicing/void_invoices.html", context)


# --- Aggregates (read-only) -----------------------------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UsageAggregate)
class UsageAggregateAdmin(ReadOnlyAdmin):
    """Registered here because metering must not import invoicing (lines point to aggregates)."""

    list_display = [
        "customer",
        "meter",
        "kind",
        "window_start",
        "window_end",
        "billed_through",
        "quantity",
        "cumulative_quantity",
        "event_count",
    ]
    list_filter = ["kind", "meter"]
    list_select_related = ["customer", "meter"]
    search_fields = ["=customer__external_id"]
    date_hierarchy = "window_start"
    readonly_fields = ["invoice_line"]

    @admin.display(description="invoice line")
    def invoice_line(self, aggregate: UsageAggregate) -> str:
        line = InvoiceLine.objects.filter(aggregate=aggregate).select_related("invoice").first()
        if line is None:
            return "-"
        url = reverse("admin:invoicing_invoice_change", args=[line.invoice_id])
        return format_html('<a href="{}">{} line {}</a>', url, line.invoice, line.position)
