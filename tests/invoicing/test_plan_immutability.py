"""A plan version in use is immutable: the service refuses, the database refuses whatever the
path (ORM, raw SQL), the admin shows it read-only and refuses a save that raced a period.

The database's refusal is an IntegrityError on PostgreSQL and on SQLite alike (triggers,
migration invoicing 0009); deletes of prices and tiers only PostgreSQL refuses."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib import messages
from django.contrib.auth.models import Group, User
from django.db import IntegrityError, connection, transaction
from django.test import Client
from django.urls import reverse

from invoicing import admin as invoicing_admin
from invoicing import selectors
from invoicing.models import Price, PricePlan, PriceTier
from invoicing.pricing import plan_price_specs
from invoicing.services import plans
from tests.factories import MeterFactory
from tests.invoicing.conftest import EXAMPLE_PRICES

pytestmark = pytest.mark.django_db
REFUSED = "plan version is used by billing periods: it cannot change"


@pytest.fixture
def used(subscribed, hourly_plan):
    """pro v1, which acme's first period uses."""
    assert selectors.plan_in_use(plan=hourly_plan)
    return hourly_plan


@pytest.fixture
def unused(used):
    """pro v2: acme's subscription moved to it, no period uses it yet (editable)."""
    plan = plans.create_plan_version(
        code="pro", name="Pro", currency="USD", interval="hour", prices=EXAMPLE_PRICES
    )
    assert not selectors.plan_in_use(plan=plan)
    return plan


def snapshot(plan: PricePlan) -> tuple:
    plan.refresh_from_db()
    return (
        (plan.code, plan.version, plan.name, plan.currency, plan.interval),
        plan_price_specs(plan),
        sorted(Price.objects.filter(plan=plan).values_list("pk", flat=True)),
        sorted(PriceTier.objects.filter(price__plan=plan).values_list("pk", flat=True)),
    )


def refused():
    """The database's refusal; the savepoint keeps the test's transaction usable."""
    return pytest.raises(IntegrityError, match=REFUSED)


def test_the_service_refuses_a_version_in_use_and_allows_a_new_one(used, unused):
    with pytest.raises(plans.PlanVersionInUse, match="is used by billing periods"):
        with transaction.atomic():
            plans.ensure_plan_version_editable(plan_id=used.pk)
    assert plans.ensure_plan_version_editable(plan_id=unused.pk) == unused


def test_orm_updates_and_inserts_of_a_version_in_use_are_refused(used, meters):
    before = snapshot(used)
    price = Price.objects.get(plan=used, meter__code="llm_tokens")
    tier = price.tiers.order_by("position").first()
    changes = [
        lambda: PricePlan.objects.filter(pk=used.pk).update(name="Cheaper"),
        lambda: PricePlan.objects.filter(pk=used.pk).update(currency="EUR"),
        lambda: Price.objects.filter(plan=used).update(minimum_minor=0),
        lambda: Price.objects.filter(pk=price.pk).update(included_quantity=Decimal(0)),
        lambda: PriceTier.objects.filter(pk=tier.pk).update(unit_amount_minor=Decimal("0.001")),
        lambda: PriceTier.objects.create(price=price, position=9, unit_amount_minor=Decimal(1)),
    ]
    for change in changes:
        with refused(), transaction.atomic():
            change()
    assert snapshot(used) == before


@pytest.mark.postgres  # SQLite leaves deletes to the services (Django flushes it with DELETE)
def test_deletes_of_prices_and_tiers_of_a_version_in_use_are_refused(used):
    before = snapshot(used)
    tier = PriceTier.objects.filter(price__plan=used).order_by("pk").first()
    changes = [
        lambda: PriceTier.objects.filter(pk=tier.pk).delete(),
        lambda: Price.objects.filter(plan=used, meter__code="agent_tasks").delete(),
    ]
    for change in changes:
        with refused(), transaction.atomic():
            change()
    with refused(), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM invoicing_price WHERE plan_id = %s", [used.pk])
    assert snapshot(used) == before


def test_a_price_cannot_be_added_to_a_version_in_use(used):
    before = snapshot(used)
    steps = MeterFactory(code="agent_steps", unit="step", aggregation="count")
    with refused(), transaction.atomic():
        Price.objects.create(plan=used, meter=steps, model="per_unit", unit_amount_minor=1)
    assert snapshot(used) == before


def test_raw_sql_updates_are_refused(used):
    before = snapshot(used)
    statements = [
        ("UPDATE invoicing_priceplan SET interval = 'day' WHERE id = %s", used.pk),
        ("UPDATE invoicing_price SET minimum_minor = 0 WHERE plan_id = %s", used.pk),
        (
            "UPDATE invoicing_pricetier SET flat_amount_minor = 1 WHERE price_id IN "
            "(SELECT id FROM invoicing_price WHERE plan_id = %s)",
            used.pk,
        ),
    ]
    for sql, plan_id in statements:
        with refused(), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [plan_id])
    assert snapshot(used) == before


def test_a_version_no_period_uses_changes_freely(unused, meters):
    price = Price.objects.get(plan=unused, meter__code="llm_tokens")
    tier = price.tiers.order_by("position").first()
    PricePlan.objects.filter(pk=unused.pk).update(name="Pro 2026")
    Price.objects.filter(pk=price.pk).update(included_quantity=Decimal(50_000))
    PriceTier.objects.filter(pk=tier.pk).update(unit_amount_minor=Decimal("0.0015"))
    Price.objects.filter(plan=unused, meter__code="agent_minutes").delete()
    specs = plan_price_specs(unused)
    assert PricePlan.objects.get(pk=unused.pk).name == "Pro 2026"
    assert specs[meters["llm_tokens"].pk].included_quantity == Decimal(50_000)
    assert specs[meters["llm_tokens"].pk].tiers[0].unit_amount_minor == Decimal("0.0015")
    assert meters["agent_minutes"].pk not in specs


# --- The admin ------------------------------------------------------------------------------


@pytest.fixture
def finance(db):
    user = User.objects.create_user("fran", password="not-used", is_staff=True)
    user.groups.add(Group.objects.get(name="Finance"))
    client = Client()
    client.force_login(user)
    return client


def test_the_admin_shows_a_version_in_use_read_only(finance, used):
    page = finance.get(reverse("admin:invoicing_priceplan_change", args=[used.pk])).content
    assert b"Used by billing periods: read-only" in page and b'name="_save"' not in page
    price = Price.objects.get(plan=used, meter__code="llm_tokens")
    page = finance.get(reverse("admin:invoicing_price_change", args=[price.pk])).content
    assert b'name="model"' not in page and b'name="tiers-0-up_to"' not in page


def test_an_admin_save_that_raced_a_new_period_is_refused_and_saves_nothing(
    finance, used, monkeypatch
):
    """The page was opened while the version was unused; the save comes after a period
    started using it: the permission check is passed (as if still unused), the service's
    check refuses, nothing is written."""
    monkeypatch.setattr(
        invoicing_admin.PriceAdmin, "has_change_permission", lambda self, request, obj=None: True
    )
    price = Price.objects.get(plan=used, meter__code="agent_tasks")
    before = snapshot(used)
    url = reverse("admin:invoicing_price_change", args=[price.pk])
    response = finance.post(
        url,
        {
            "meter": str(price.meter_id),
            "model": "per_unit",
            "unit_amount_minor": "1",
            "included_quantity": "0",
            "minimum_minor": "0",
            "tiers-TOTAL_FORMS": "0",
            "tiers-INITIAL_FORMS": "0",
        },
        follow=True,
    )
    assert response.redirect_chain == [(url, 302)]
    [message] = list(response.context["messages"])
    assert message.level == messages.ERROR
    assert str(message).startswith("Pro (pro v1) is used by billing periods and cannot change")
    assert snapshot(used) == before
