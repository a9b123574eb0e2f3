"""Rate cards in a real browser (Playwright driving Debian's Chromium against the live test
server, as tests/portal/test_browser.py does): finance edits a rule in the admin, finance bills
one unpriced line and waives another, and the portal dashboard shows a row per model and token
type. Screenshots go to test-output/screenshots/ (not committed)."""

from __future__ import annotations

import os
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.utils import timezone
from playwright.sync_api import expect

from audit.models import AuditEntry
from invoicing.demo import DEMO_PLAN_PRICES
from invoicing.models import InvoiceLine, Price, PricePlan, UnpricedResolution
from invoicing.pricing import meter_price
from invoicing.rate_cards import RateCard
from invoicing.services import closing, plans, subscriptions
from metering import services as metering_services
from tests.invoicing.conftest import T0
from tests.portal import test_browser as portal_browser
from tests.portal.conftest import PASSWORD, make_meters, make_portal_customer, record

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
# The portal's browser fixtures: one Chromium per module, a fresh context per test.
browser = portal_browser.browser
page = portal_browser.page
SCREENSHOTS = portal_browser.SCREENSHOTS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs("chromium"),
    pytest.mark.django_db(transaction=True),
]
D = Decimal
H = timedelta(hours=1)

# What the Finance group is given by the data migrations (which do not survive the flush of
# transactional tests): plans and rate cards, invoices and unpriced usage.
FINANCE = [
    "view_priceplan",
    "change_priceplan",
    "view_price",
    "change_price",
    "view_pricerate",
    "add_pricerate",
    "change_pricerate",
    "delete_pricerate",
    "view_priceratetier",
    "add_priceratetier",
    "change_priceratetier",
    "delete_priceratetier",
    "view_invoice",
    "view_invoiceline",
    "view_unpricedline",
    "change_unpricedline",
    "view_unpricedresolution",
]


def shot(page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def finance_login(page) -> User:
    group, _ = Group.objects.get_or_create(name="Finance")
    group.permissions.add(
        *Permission.objects.filter(content_type__app_label="invoicing", codename__in=FINANCE)
    )
    user = User.objects.create_user(username="finance", password=PASSWORD, is_staff=True)
    user.groups.add(group)
    page.goto("/admin/")
    page.get_by_label("Username").fill("finance")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/admin/")
    return user


def demo_plan(interval: str) -> PricePlan:
    return plans.create_plan_version(
        code="demo", name="Demo", currency="USD", interval=interval, prices=DEMO_PLAN_PRICES
    )


def test_finance_edits_a_rule_of_a_rate_card_in_the_admin(page):
    make_meters()
    plan = demo_plan("month")  # a draft version: no period uses it
    price = Price.objects.get(plan=plan, meter__code="llm_tokens")
    user = finance_login(page)

    page.goto(f"/admin/invoicing/price/{price.pk}/change/")
    expect(page.locator('textarea[name="dimensions"]')).to_have_value('["model", "token_type"]')
    shot(page, "rate_card_admin_rules")
    # Rule 2 ({"model": "large"}) made a catch-all before rule 3: refused on its field.
    match = page.locator('textarea[name="rates-1-match"]')
    expect(match).to_have_value('{"model": "large"}')
    match.fill("{}")
    with page.expect_navigation():
        page.get_by_role("button", name="Save", exact=True).click()
    error = page.locator(".errorlist", has_text="the catch-all {} may only be the last rule")
    expect(error).to_be_visible()
    shot(page, "rate_card_admin_error")
    assert dict(meter_price(Price.objects.get(pk=price.pk)).rules[1].match) == {"model": "large"}

    # Put it back and reprice it.
    page.locator('textarea[name="rates-1-match"]').fill('{"model": "large"}')
    page.locator('input[name="rates-1-unit_amount_minor"]').fill("0.0025")
    with page.expect_navigation():
        page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was changed successfully")
    shot(page, "rate_card_admin_saved")

    card = meter_price(Price.objects.get(pk=price.pk))
    assert isinstance(card, RateCard)
    assert card.rules[1].spec.unit_amount_minor == D("0.0025")
    entry = AuditEntry.objects.get(action="admin.price_changed")
    assert entry.actor_id == user.pk
    changed = entry.data["inlines"][0]["fields"]
    assert changed["unit_amount_minor"]["to"] == "0.0025"

    # The graduated rule's tiers, on its own page.
    page.goto(f"/admin/invoicing/price/{price.pk}/change/")
    page.locator("#rates-3 a.inlinechangelink").click()
    page.wait_for_url("**/pricerate/**")
    page.locator('input[name="tiers-1-unit_amount_minor"]').fill("0.00008")
    shot(page, "rate_card_admin_rule_tiers")
    with page.expect_navigation():
        page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_url(f"**/admin/invoicing/price/{price.pk}/change/")
    card = meter_price(Price.objects.get(pk=price.pk))
    assert isinstance(card, RateCard)
    assert card.rules[3].spec.tiers[1].unit_amount_minor == D("0.00008")


def test_finance_bills_one_unpriced_line_and_waives_another(page, settings):
    settings.BILLING_GRACE_PERIOD = 600
    make_meters()
    key, _ = metering_services.create_api_key(name="agents")
    acme = make_portal_customer("acme")
    plan = demo_plan("hour")
    subscriptions.subscribe_customer(customer=acme.customer, plan=plan, now=T0)
    at = T0 + timedelta(minutes=5)
    record(
        key,
        acme.customer,
        [
            ("mi", "llm_tokens", 400_000, at, {"model": "medium", "token_type": "input"}),
            ("mo", "llm_tokens", 20_000, at, {"model": "medium", "token_type": "output"}),
            ("lo", "llm_tokens", 1_000, at, {"model": "large", "token_type": "output"}),
        ],
        now=at,
    )
    closing.close_due_periods(now=T0 + H + timedelta(minutes=20))
    medium_in, medium_out = InvoiceLine.objects.filter(kind="unpriced").order_by("position")
    user = finance_login(page)

    page.goto("/admin/invoicing/unpricedline/")
    expect(page.locator("#unpriced-totals")).to_contain_text("open")
    expect(page.locator("#result_list")).to_contain_text("model=medium, token_type=input")
    shot(page, "unpriced_list_open")

    # Bill the input tokens with rule 2 ({"model": "large"}: 0.002 per token).
    page.locator(f'input[name="_selected_action"][value="{medium_in.pk}"]').check()
    page.locator('select[name="action"]').select_option("bill_with_rule")
    page.locator('input[name="rule"]').fill("2")
    with page.expect_navigation():
        page.get_by_role("button", name="Go", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("billed at 800 minor units")

    # Waive the output tokens, with the reason.
    page.locator(f'input[name="_selected_action"][value="{medium_out.pk}"]').check()
    page.locator('select[name="action"]').select_option("waive_with_reason")
    page.locator('input[name="reason"]').fill("medium model in beta, free this month")
    with page.expect_navigation():
        page.get_by_role("button", name="Go", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("waived")
    rows = page.locator("#result_list")
    expect(rows).to_contain_text("billed with rule 2, 800 minor units (for the next invoice)")
    expect(rows).to_contain_text("waived: medium model in beta, free this month")
    shot(page, "unpriced_list_decided")

    decisions = {
        r.line_id: (r.action, r.rule_position, r.amount_minor, r.reason, r.user_id)
        for r in UnpricedResolution.objects.all()
    }
    assert decisions == {
        medium_in.pk: ("bill", 2, 800, "", user.pk),
        medium_out.pk: ("waive", None, 0, "medium model in beta, free this month", user.pk),
    }
    audited = AuditEntry.objects.filter(action__startswith="unpriced.")
    assert sorted(audited.values_list("action", "actor_id")) == [
        ("unpriced.billed", user.pk),
        ("unpriced.waived", user.pk),
    ]

    # The invoice's page says which rule priced what, and links back from the list.
    page.get_by_role("link", name=f"line {medium_in.position}").first.click()
    expect(page.locator("body")).to_contain_text("rule 1: model=large, token_type=output")
    expect(page.locator("body")).to_contain_text("no rule (unpriced)")
    shot(page, "invoice_lines_priced_by")


def test_portal_dashboard_shows_a_row_per_model_and_token_type(page):
    make_meters()
    key, _ = metering_services.create_api_key(name="agents")
    acme = make_portal_customer("acme")
    now = timezone.now()
    subscriptions.subscribe_customer(customer=acme.customer, plan=demo_plan("month"), now=now)
    at = now - timedelta(seconds=30)
    record(
        key,
        acme.customer,
        [
            ("li", "llm_tokens", 2_000_000, at, {"model": "large", "token_type": "input"}),
            ("lo", "llm_tokens", 500_000, at, {"model": "large", "token_type": "output"}),
            ("si", "llm_tokens", 1_100_000, at, {"model": "small", "token_type": "input"}),
            ("so", "llm_tokens", 1_000_000, at, {"model": "small", "token_type": "output"}),
            ("mi", "llm_tokens", 300_000, at, {"model": "medium", "token_type": "input"}),
        ],
        now=now,
    )
    page.goto("/portal/login/")
    page.get_by_label("Username").fill(acme.user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url("**/portal/")

    heading = page.locator('#usage-lines tr[data-meter-heading="llm_tokens"]')
    expect(heading).to_contain_text("LLM tokens (llm_tokens) by model, token_type")
    expect(heading).to_contain_text("$80.00")
    rows = page.locator('#usage-lines tbody tr[data-meter="llm_tokens"]')
    expect(rows).to_have_count(5)
    shown = {
        " ".join(rows.nth(i).locator("th").text_content().split()): rows.nth(i).get_attribute(
            "data-amount-minor"
        )
        for i in range(5)
    }
    assert shown == {
        "LLM tokens: model=large, token_type=input": "4000",
        "LLM tokens: model=large, token_type=output": "3000",
        "LLM tokens: model=medium, token_type=input": "0",
        "LLM tokens: model=small, token_type=input": "200",
        "LLM tokens: model=small, token_type=output": "800",
    }
    # the meter's name is for screen readers; the rows show the values under the heading
    assert rows.nth(0).locator("th").evaluate("el => el.firstElementChild.className") == (
        "visually-hidden"
    )
    shot(page, "portal_dashboard_per_model")
