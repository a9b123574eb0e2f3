"""A meter with usage keeps its code, aggregation and unique property: the service refuses,
the database refuses whatever the path (ORM, raw SQL), the admin shows them read-only and
refuses a save that raced the meter's first event.

The database's refusal is an IntegrityError on PostgreSQL and on SQLite alike (trigger,
migration metering 0012)."""

from __future__ import annotations

import pytest
from django.contrib import messages
from django.contrib.auth.models import Group, User
from django.db import IntegrityError, connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from metering import admin as metering_admin
from metering import services
from metering.models import Meter
from tests.factories import MeterFactory

pytestmark = pytest.mark.django_db
REFUSED = "meter has usage: its code, aggregation and unique_property cannot change"


@pytest.fixture
def used(service_key, customer, meters):
    """llm_tokens (sum) with one event."""
    services.record_usage_events(
        api_key=service_key[0],
        raw_events=[
            {
                "event_id": "e1",
                "customer_id": "acme",
                "meter": "llm_tokens",
                "quantity": "1200",
                "timestamp": timezone.now().isoformat(),
            }
        ],
        now=timezone.now(),
    )
    return meters["llm_tokens"]


def stored(meter: Meter) -> dict:
    return Meter.objects.filter(pk=meter.pk).values().get()


def test_the_service_refuses_to_change_what_usage_means_and_saves_nothing(used):
    before = stored(used)
    for field, value in [
        ("code", "tokens"),
        ("aggregation", "max"),
        ("unique_property", "model"),
    ]:
        meter = Meter.objects.get(pk=used.pk)
        setattr(meter, field, value)
        meter.name = "Renamed along"
        with pytest.raises(services.MeterInUse, match=f"its {field} cannot change"):
            services.save_meter(meter=meter)
        assert stored(used) == before


def test_the_service_changes_the_rest_and_a_meter_without_usage(used):
    meter = Meter.objects.get(pk=used.pk)
    meter.name, meter.unit, meter.is_active = "LLM tokens (all models)", "tok", False
    services.save_meter(meter=meter)
    assert (stored(used)["name"], stored(used)["unit"], stored(used)["is_active"]) == (
        "LLM tokens (all models)",
        "tok",
        False,
    )
    fresh = MeterFactory(code="agent_steps", unit="step", aggregation="count")
    fresh.code, fresh.aggregation, fresh.unique_property = "agent_runs", "unique_count", "run"
    services.save_meter(meter=fresh)
    assert (stored(fresh)["code"], stored(fresh)["aggregation"]) == ("agent_runs", "unique_count")


def test_orm_and_raw_sql_updates_are_refused_by_the_database(used):
    before = stored(used)
    changes = [
        lambda: Meter.objects.filter(pk=used.pk).update(code="tokens"),
        lambda: Meter.objects.filter(pk=used.pk).update(aggregation="latest"),
        lambda: Meter.objects.filter(pk=used.pk).update(
            aggregation="unique_count", unique_property="model"
        ),
    ]
    for change in changes:
        with pytest.raises(IntegrityError, match=REFUSED), transaction.atomic():
            change()
    with (
        pytest.raises(IntegrityError, match=REFUSED),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("UPDATE metering_meter SET code = 'x' WHERE id = %s", [used.pk])
    assert stored(used) == before
    # the rest, and an update that keeps the meaning, go through
    assert Meter.objects.filter(pk=used.pk).update(name="Tokens", code="llm_tokens") == 1
    assert stored(used) == {**before, "name": "Tokens"}


def test_a_meter_without_usage_changes_in_the_database(meters):
    meter = meters["agent_minutes"]
    assert Meter.objects.filter(pk=meter.pk).update(code="agent_seconds", aggregation="max") == 1
    assert (stored(meter)["code"], stored(meter)["aggregation"]) == ("agent_seconds", "max")


# --- The admin ------------------------------------------------------------------------------


@pytest.fixture
def finance(db):
    user = User.objects.create_user("fran", password="not-used", is_staff=True)
    user.groups.add(Group.objects.get(name="Finance"))
    client = Client()
    client.force_login(user)
    return client


def form(meter: Meter, **changes: str) -> dict:
    data = {
        "code": meter.code,
        "name": meter.name,
        "unit": meter.unit,
        "aggregation": meter.aggregation,
        "unique_property": meter.unique_property,
        "description": meter.description,
        "is_active": "on",
    }
    return {**data, **changes}


def test_the_admin_shows_the_meaning_read_only_and_saves_the_rest(finance, used):
    url = reverse("admin:metering_meter_change", args=[used.pk])
    page = finance.get(url).content.decode()
    assert 'name="code"' not in page and 'name="aggregation"' not in page
    assert 'name="unique_property"' not in page and 'name="name"' in page
    response = finance.post(url, form(used, code="tokens", aggregation="max", name="Tokens"))
    assert response.status_code == 302
    assert (stored(used)["code"], stored(used)["aggregation"], stored(used)["name"]) == (
        "llm_tokens",
        "sum",
        "Tokens",
    )


def test_an_admin_save_that_raced_the_first_event_is_refused_and_saves_nothing(
    finance, used, monkeypatch
):
    """The page was opened before the meter's first event (its code was editable); the save
    comes after: the service refuses, the admin shows why, nothing is written."""
    monkeypatch.setattr(
        metering_admin.MeterAdmin, "get_readonly_fields", lambda self, request, obj=None: []
    )
    before = stored(used)
    url = reverse("admin:metering_meter_change", args=[used.pk])
    response = finance.post(url, form(used, code="tokens", name="Tokens"), follow=True)
    assert response.redirect_chain == [(url, 302)]
    [message] = list(response.context["messages"])
    assert (message.level, str(message)) == (
        messages.ERROR,
        "meter llm_tokens has usage: its code cannot change (create a new meter for the new "
        "meaning)",
    )
    assert stored(used) == before
