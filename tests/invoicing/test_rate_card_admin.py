"""Rate cards in the admin (DESIGN 4a): finance edits a draft version's rules inline, in order,
and each rule's tiers on its page, validated by rate_cards.validate_rate_card with the error on
the field; a version in use is read-only; every save is audited; the invoice's lines and the
unpriced list say which rule priced what."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client, override_settings
from django.urls import reverse

from audit.models import AuditEntry
from invoicing.models import Invoice, InvoiceLine, Price, PricePlan, PriceRate
from invoicing.pricing import meter_price
from invoicing.rate_cards import RateCard
from invoicing.services import closing, subscriptions
from tests.invoicing.conftest import T0
from tests.invoicing.test_rate_cards import GRACE, MIXED, rate_card_plan

pytestmark = pytest.mark.django_db
D = Decimal
H = timedelta(hours=1)


@pytest.fixture
def finance(db):
    user = User.objects.create_user("fran", password="not-used", is_staff=True)
    user.groups.add(Group.objects.get(name="Finance"))
    client = Client()
    client.force_login(user)
    client.user = user
    return client


@pytest.fixture
def draft_card(api, meters):
    """The DESIGN 4a rate card in a plan version that no period uses (editable)."""
    response = api.post("/api/v1/plans", rate_card_plan(), format="json")
    assert response.status_code == 201, response.content
    return Price.objects.get(plan__code="agents", meter__code="llm_tokens")


def page_data(response) -> dict[str, str]:
    """What the change page's forms would post unchanged: the main form, each inline's
    management form and rows (as a browser submits them)."""
    data: dict[str, str] = {}
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        management = formset.management_form
        for name in management.fields:
            data[management.add_prefix(name)] = str(management[name].value())
        forms.extend(formset.forms)
    for form in forms:
        for name in form.fields:
            value = form[name].value()
            if value is None or value is False:
                continue
            data[form.add_prefix(name)] = "on" if value is True else str(value)
    return data


def rule_keys(data: dict[str, str]) -> dict[str, int]:
    """Each rule row's form index by its match text (the rows as the page shows them)."""
    return {
        value: int(key.split("-")[1])
        for key, value in data.items()
        if key.startswith("rates-") and key.endswith("-match")
    }


def card_of(price: Price) -> RateCard:
    found = meter_price(Price.objects.get(pk=price.pk))
    assert isinstance(found, RateCard)
    return found


def errors_of(response) -> dict[str, list[str]]:
    """Field errors of the page's forms, by field name with the inline's row prefix."""
    errors: dict[str, list[str]] = {}
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        forms.extend(inline.formset.forms)
        if inline.formset.non_form_errors():
            errors[f"{inline.formset.prefix}-"] = list(inline.formset.non_form_errors())
    for form in forms:
        for name, messages in form.errors.items():
            errors[form.add_prefix(name)] = list(messages)
    return errors


def test_finance_reorders_edits_and_adds_rules_inline_and_it_is_audited(finance, draft_card):
    url = reverse("admin:invoicing_price_change", args=[draft_card.pk])
    page = finance.get(url)
    assert page.status_code == 200
    data = page_data(page)
    rows = rule_keys(data)
    large_out = rows['{"model": "large", "token_type": "output"}']
    large = rows['{"model": "large"}']
    # Swap the first two rules, reprice the large one, add a catch-all at the end.
    data[f"rates-{large_out}-position"], data[f"rates-{large}-position"] = "2", "1"
    data[f"rates-{large}-unit_amount_minor"] = "0.0007"
    new = int(data["rates-TOTAL_FORMS"])
    data["rates-TOTAL_FORMS"] = str(new + 1)
    data.update(
        {
            f"rates-{new}-price": str(draft_card.pk),
            f"rates-{new}-position": "40",
            f"rates-{new}-match": "{}",
            f"rates-{new}-model": "per_unit",
            f"rates-{new}-unit_amount_minor": "0.0001",
            f"rates-{new}-included_quantity": "0",
            f"rates-{new}-minimum_minor": "0",
        }
    )

    saved = finance.post(url, data)

    assert saved.status_code == 302, errors_of(saved)
    card = card_of(draft_card)
    assert [(dict(rule.match), rule.spec.unit_amount_minor) for rule in card.rules] == [
        ({"model": "large"}, D("0.0007")),
        ({"model": "large", "token_type": "output"}, D("0.0015")),
        ({"model": "small"}, None),
        ({}, D("0.0001")),
    ]
    # Stored as rules 1..4, in that order: "rule N" is the Nth to match everywhere.
    assert list(draft_card.rates.order_by("position").values_list("position", flat=True)) == [
        1,
        2,
        3,
        4,
    ]
    assert card.rules[2].spec.tiers  # the graduated rule kept its tiers
    entry = AuditEntry.objects.get(action="admin.price_changed")
    assert entry.actor_id == finance.user.pk
    inline_rows = {row["object"]: row["fields"] for row in entry.data["inlines"]}
    changed = inline_rows["rule 1 (model=large): per_unit"]
    assert changed["unit_amount_minor"] == {"from": "0.000500000000", "to": "0.0007"}
    assert changed["position"] == {"from": 2, "to": 1}
    assert any(name.startswith("rule 4 (any other)") for name in inline_rows)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"match": "{}"}, "match", "the catch-all {} may only be the last rule"),
        ({"match": '{"region": "eu"}'}, "match", "'region' is not one of the dimensions"),
        ({"match": '{"model": 5}'}, "match", "match values are strings"),
        ({"match": '["model"]'}, "match", 'an object such as {"model": "large"}'),
        ({"unit_amount_minor": ""}, "unit_amount_minor", "unit_amount_minor"),
        ({"position": "3"}, "", "Please correct the duplicate data for position."),
    ],
)
def test_an_invalid_rule_is_shown_on_its_field_and_nothing_is_saved(
    finance, draft_card, change, field, message
):
    url = reverse("admin:invoicing_price_change", args=[draft_card.pk])
    before = card_of(draft_card)
    data = page_data(finance.get(url))
    row = rule_keys(data)['{"model": "large"}']
    for name, value in change.items():
        data[f"rates-{row}-{name}"] = value

    refused = finance.post(url, data)

    assert refused.status_code == 200
    errors = errors_of(refused)
    key = f"rates-{row}-{field}" if field else "rates-"  # "": the formset's own error
    assert key in errors, errors
    assert any(message in text for text in errors[key]), errors
    assert card_of(draft_card) == before
    assert not AuditEntry.objects.filter(action="admin.price_changed").exists()


def test_a_new_graduated_rule_without_tiers_says_how_to_add_it(finance, draft_card):
    url = reverse("admin:invoicing_price_change", args=[draft_card.pk])
    data = page_data(finance.get(url))
    row = rule_keys(data)['{"model": "large"}']
    data[f"rates-{row}-model"] = "volume"

    refused = finance.post(url, data)

    errors = errors_of(refused)[f"rates-{row}-model"]
    assert any("tiers" in text and "rule's page" in text for text in errors), errors


@pytest.mark.parametrize(
    ("dimensions", "message"),
    [
        ('["model", "model"]', "dimension 'model' is named twice"),
        ("[]", "give 1 to 3 property names"),
        ('["a", "b", "c", "d"]', "give 1 to 3 property names"),
        ('"model"', "a list of 1 to 3 property names"),
    ],
)
def test_invalid_dimensions_are_shown_on_their_field(finance, draft_card, dimensions, message):
    url = reverse("admin:invoicing_price_change", args=[draft_card.pk])
    data = page_data(finance.get(url))
    data["dimensions"] = dimensions

    refused = finance.post(url, data)

    assert refused.status_code == 200
    assert any(message in text for text in errors_of(refused)["dimensions"])
    assert Price.objects.get(pk=draft_card.pk).dimensions == ["model", "token_type"]


def test_dropping_a_dimension_that_rules_match_on_is_refused_on_the_rules(finance, draft_card):
    url = reverse("admin:invoicing_price_change", args=[draft_card.pk])
    data = page_data(finance.get(url))
    data["dimensions"] = '["model"]'

    refused = finance.post(url, data)

    row = rule_keys(data)['{"model": "large", "token_type": "output"}']
    assert any("'token_type' is not one of" in t for t in errors_of(refused)[f"rates-{row}-match"])
    assert Price.objects.get(pk=draft_card.pk).dimensions == ["model", "token_type"]


def _rule_page(finance, rate: PriceRate):
    url = reverse("admin:invoicing_pricerate_change", args=[rate.pk])
    return url, finance.get(url)


def test_finance_edits_a_rules_tiers_on_its_page(finance, draft_card):
    small = draft_card.rates.get(match={"model": "small"})
    url, page = _rule_page(finance, small)
    assert page.status_code == 200
    data = page_data(page)
    data["tiers-0-up_to"] = "2000000"
    data["tiers-1-unit_amount_minor"] = "0.00004"

    saved = finance.post(url, data)

    assert saved.status_code == 302, errors_of(saved)
    assert saved["Location"] == reverse("admin:invoicing_price_change", args=[draft_card.pk])
    rule = card_of(draft_card).rules[2]
    assert [(t.up_to, t.unit_amount_minor) for t in rule.spec.tiers] == [
        (D("2000000"), D("0.0001")),
        (None, D("0.00004")),
    ]
    entry = AuditEntry.objects.get(action="admin.pricerate_changed")
    assert entry.actor_id == finance.user.pk and len(entry.data["inlines"]) == 2


def test_a_per_unit_rule_becomes_graduated_with_its_tiers_in_one_save(finance, draft_card):
    large = draft_card.rates.get(match={"model": "large"})
    url, page = _rule_page(finance, large)
    data = page_data(page)
    data.update(
        {
            "model": "graduated",
            "unit_amount_minor": "",
            "tiers-TOTAL_FORMS": "2",
            "tiers-0-position": "1",
            "tiers-0-up_to": "1000",
            "tiers-0-unit_amount_minor": "0.001",
            "tiers-0-flat_amount_minor": "0",
            "tiers-1-position": "2",
            "tiers-1-unit_amount_minor": "0.0005",
            "tiers-1-flat_amount_minor": "0",
        }
    )

    saved = finance.post(url, data)

    assert saved.status_code == 302, errors_of(saved)
    rule = card_of(draft_card).rules[1]
    assert rule.spec.model == "graduated" and len(rule.spec.tiers) == 2


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"tiers-1-up_to": "500000"}, "tiers-1-up_to", "greater"),
        ({"tiers-0-up_to": ""}, "tiers-0-up_to", "may be empty (open) only on the last tier"),
        ({"unit_amount_minor": "0.5"}, "unit_amount_minor", "unit_amount_minor"),
    ],
)
def test_an_invalid_tier_or_rule_field_is_shown_on_the_field(
    finance, draft_card, change, field, message
):
    small = draft_card.rates.get(match={"model": "small"})
    url, page = _rule_page(finance, small)
    before = card_of(draft_card)
    data = page_data(page)
    data.update(change)

    refused = finance.post(url, data)

    assert refused.status_code == 200
    errors = errors_of(refused)
    assert any(message in text for text in errors.get(field, [])), errors
    assert card_of(draft_card) == before


def test_a_version_in_use_is_read_only_and_refused(finance, draft_card, customer):
    url = reverse("admin:invoicing_price_change", args=[draft_card.pk])
    data = page_data(finance.get(url))
    rate = draft_card.rates.get(match={"model": "small"})
    rule_url, rule_page = _rule_page(finance, rate)
    rule_data = page_data(rule_page)
    subscriptions.subscribe_customer(customer=customer, plan=draft_card.plan, now=T0)
    before = card_of(draft_card)

    shown = finance.get(url)
    assert shown.status_code == 200
    assert 'name="rates-0-match"' not in shown.content.decode()
    row = rule_keys(data)['{"model": "large"}']
    data[f"rates-{row}-unit_amount_minor"] = "0.9"
    rule_data["tiers-0-up_to"] = "5"

    assert finance.post(url, data).status_code == 403
    assert finance.post(rule_url, rule_data).status_code == 403
    assert card_of(draft_card) == before
    assert not AuditEntry.objects.filter(action__startswith="admin.price").exists()


def test_a_save_that_races_a_new_period_is_refused_by_the_guard(finance, draft_card, customer):
    """The page was checked before the period existed; the save's transaction checks again
    (plans.ensure_plan_version_editable) and rolls back."""
    from invoicing import admin as invoicing_admin

    url = reverse("admin:invoicing_price_change", args=[draft_card.pk])
    data = page_data(finance.get(url))
    row = rule_keys(data)['{"model": "large"}']
    data[f"rates-{row}-unit_amount_minor"] = "0.9"
    before = card_of(draft_card)
    original = invoicing_admin._version_locked
    invoicing_admin._version_locked = lambda price: False  # the permission check passed
    try:
        subscriptions.subscribe_customer(customer=customer, plan=draft_card.plan, now=T0)
        refused = finance.post(url, data, follow=True)
    finally:
        invoicing_admin._version_locked = original
    assert "is used by billing periods and cannot change" in refused.content.decode()
    assert card_of(draft_card) == before


# --- Which rule priced what -------------------------------------------------------------------


@override_settings(**GRACE)
def test_invoice_lines_and_the_unpriced_list_say_which_rule_priced_what(
    finance, record, api, meters, customer
):
    response = api.post("/api/v1/plans", rate_card_plan(), format="json")
    assert response.status_code == 201
    plan = PricePlan.objects.get(code="agents")
    subscriptions.subscribe_customer(customer=customer, plan=plan, now=T0)
    record(MIXED, now=T0 + timedelta(minutes=6))
    closing.close_due_periods(now=T0 + H + timedelta(minutes=10))
    invoice = Invoice.objects.get(customer=customer)

    page = finance.get(reverse("admin:invoicing_invoice_change", args=[invoice.pk]))
    html = page.content.decode()
    rules = [
        (line.pricing["dimensions"], line.pricing.get("rule"))
        for line in invoice.lines.filter(meter__code="llm_tokens", kind="usage")
    ]
    assert rules == [
        ({"model": "large", "token_type": "input"}, {"match": {"model": "large"}, "position": 2}),
        (
            {"model": "large", "token_type": "output"},
            {"match": {"model": "large", "token_type": "output"}, "position": 1},
        ),
        ({"model": "small", "token_type": "input"}, {"match": {"model": "small"}, "position": 3}),
        ({"model": "small", "token_type": None}, {"match": {"model": "small"}, "position": 3}),
    ]
    assert "rule 1: model=large, token_type=output" in html
    assert "rule 2: model=large" in html
    assert "rule 3: model=small" in html
    assert html.count("no rule (unpriced)") == 3
    assert "model=(none), token_type=output" in html

    unpriced_page = finance.get(reverse("admin:invoicing_unpricedline_changelist"))
    listed = unpriced_page.content.decode()
    huge = InvoiceLine.objects.get(kind="unpriced", pricing__dimensions__model="huge")
    invoice_url = reverse("admin:invoicing_invoice_change", args=[invoice.pk])
    customer_url = reverse("admin:metering_customer_change", args=[customer.pk])
    assert f'<a href="{invoice_url}">DRAFT #{invoice.pk} line {huge.position}</a>' in listed
    assert f'<a href="{customer_url}">acme</a>' in listed
