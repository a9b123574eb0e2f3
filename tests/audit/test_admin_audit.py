"""Every admin action is in the audit log once, with its user, its object and what changed.

The admin site puts audit.audited_admin.AuditedModelAdmin under every registered admin; these
tests drive the metering back office (customers, meters, API keys) through the admin pages,
and the rules for actions through a throw-away admin on a site of its own.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
import time_machine
from django.contrib import admin, messages
from django.contrib.auth.models import Group, Permission, User
from django.contrib.messages.storage.cookie import CookieStorage
from django.core import mail
from django.template.response import TemplateResponse
from django.test import Client, RequestFactory

from audit.audited_admin import AuditedModelAdmin, is_secret_field
from audit.models import AuditEntry
from billing_project.admin_site import BillingAdminSite
from invoicing.models import Price, Subscription
from invoicing.services import plans
from metering.models import ApiKey, Customer, Meter
from tests.factories import CustomerFactory, MeterFactory
from tests.invoicing.test_admin import _price_post

pytestmark = pytest.mark.django_db
AT = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
AT_JSON = "2026-11-02T12:00:00Z"  # how the log stores AT (DjangoJSONEncoder)


@pytest.fixture
def fin(db):
    """A back-office user whose permissions come from the Finance group's migrations."""
    user = User.objects.create_user("fin", password="not-used", is_staff=True)
    user.groups.add(Group.objects.get(name="Finance"))
    return user


@pytest.fixture
def finance(fin):
    client = Client()
    client.force_login(fin)
    return client


def entries() -> list[tuple[str, str, int | None, str, str, str, dict]]:
    return list(
        AuditEntry.objects.order_by("id").values_list(
            "action",
            "actor",
            "actor_id",
            "object_type",
            "object_id",
            "customer_external_id",
            "data",
        )
    )


def shown_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# --- Every admin is audited ---------------------------------------------------------------


def test_every_registered_admin_is_audited():
    registry = admin.site._registry
    assert all(isinstance(model_admin, AuditedModelAdmin) for model_admin in registry.values())
    # ours and the third-party ones alike
    for model in (Customer, Meter, ApiKey, AuditEntry, User, Group):
        assert model in registry, model
    assert type(registry[ApiKey]).__name__ == "ApiKeyAdmin"  # the class keeps its name


def test_secret_fields_are_recognised_by_name():
    for name in ("password", "password1", "key", "key_hash", "otp_token", "webhook_secret"):
        assert is_secret_field(name), name
    for name in ("prefix", "name", "keyboard", "customer", "event_name", "tokens_used"):
        assert not is_secret_field(name), name


# --- Customers ----------------------------------------------------------------------------


CUSTOMER_FORM = {
    "external_id": "initech",
    "name": "Initech",
    "emails": '["ap@initech.example"]',
    "currency": "EUR",
    "timezone": "Europe/Paris",
    "status": "active",
}


def test_adding_a_customer_writes_one_entry_with_the_user_and_the_values(finance, fin):
    response = finance.post("/admin/metering/customer/add/", CUSTOMER_FORM)

    assert response.status_code == 302
    customer = Customer.objects.get(external_id="initech")
    assert entries() == [
        (
            "admin.customer_added",
            "fin",
            fin.pk,
            "metering.customer",
            str(customer.pk),
            "initech",
            {
                "object": "Initech (initech)",
                "changes": [{"added": {}}],
                "fields": {
                    "external_id": {"from": None, "to": "initech"},
                    "name": {"from": None, "to": "Initech"},
                    "emails": {"from": [], "to": ["ap@initech.example"]},
                    "currency": {"from": "USD", "to": "EUR"},
                    "timezone": {"from": "UTC", "to": "Europe/Paris"},
                },
            },
        )
    ]


def test_changing_a_customer_records_each_field_before_and_after(finance, fin, customer):
    form = {
        **CUSTOMER_FORM,
        "external_id": "acme",
        "name": "Acme Inc",
        "emails": json.dumps(customer.emails),
        "currency": customer.currency,
        "timezone": "UTC",
    }
    response = finance.post(f"/admin/metering/customer/{customer.pk}/change/", form)

    assert response.status_code == 302
    [(action, actor, actor_id, _, object_id, external_id, data)] = entries()
    assert (action, actor, actor_id, object_id, external_id) == (
        "admin.customer_changed",
        "fin",
        fin.pk,
        str(customer.pk),
        "acme",
    )
    assert data == {
        "object": "Acme Inc (acme)",
        "changes": [{"changed": {"fields": ["Name", "Emails"]}}],  # Django's own message
        "fields": {"name": {"from": "Acme Corp", "to": "Acme Inc"}},
    }


def test_a_refused_form_writes_nothing(finance, customer):
    before = list(Customer.objects.values())
    response = finance.post(
        f"/admin/metering/customer/{customer.pk}/change/",
        {**CUSTOMER_FORM, "external_id": "acme", "timezone": "Mars/Olympus"},
    )
    assert response.status_code == 200  # the form again, with its error
    assert list(Customer.objects.values()) == before
    assert entries() == []


def test_deleting_a_customer_keeps_its_values_in_the_log(admin_client, admin_user):
    gone = CustomerFactory(external_id="gone", name="Gone Ltd", emails=[])
    pk = gone.pk

    response = admin_client.post(f"/admin/metering/customer/{pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not Customer.objects.filter(pk=pk).exists()
    [(action, actor, actor_id, object_type, object_id, external_id, data)] = entries()
    assert (action, actor, actor_id, object_type, object_id, external_id) == (
        "admin.customer_deleted",
        "admin",
        admin_user.pk,
        "metering.customer",
        str(pk),
        "gone",
    )
    assert data["object"] == "Gone Ltd (gone)" and data["changes"] == []
    assert {k: v for k, v in data["fields"].items() if k not in ("created_at", "updated_at")} == {
        "id": pk,
        "external_id": "gone",
        "name": "Gone Ltd",
        "emails": [],
        "currency": "USD",
        "timezone": "UTC",
        "status": "active",
        "billing_address": "",
        "tax_id": "",
    }


def test_delete_selected_writes_one_entry_per_row_and_the_confirmation_none(
    admin_client, admin_user
):
    first = CustomerFactory(external_id="gone-1", emails=[])
    second = CustomerFactory(external_id="gone-2", emails=[])
    selection = {"action": "delete_selected", "_selected_action": [first.pk, second.pk]}

    confirm = admin_client.post("/admin/metering/customer/", selection)
    assert confirm.status_code == 200 and entries() == []
    done = admin_client.post("/admin/metering/customer/", {**selection, "post": "yes"})

    assert done.status_code == 302
    assert not Customer.objects.filter(pk__in=[first.pk, second.pk]).exists()
    assert [(e[0], e[1], e[4], e[5]) for e in entries()] == [
        ("admin.customer_deleted", "admin", str(first.pk), "gone-1"),
        ("admin.customer_deleted", "admin", str(second.pk), "gone-2"),
    ]


# --- Meters -------------------------------------------------------------------------------


METER_FORM = {
    "code": "gpu_seconds",
    "name": "GPU seconds",
    "unit": "second",
    "aggregation": "sum",
    "unique_property": "",
    "description": "",
    "is_active": "on",
}


def test_adding_and_editing_a_meter_writes_one_entry_each(finance, fin):
    assert finance.post("/admin/metering/meter/add/", METER_FORM).status_code == 302
    meter = Meter.objects.get(code="gpu_seconds")
    changed = finance.post(
        f"/admin/metering/meter/{meter.pk}/change/", {**METER_FORM, "unit": "s", "is_active": ""}
    )

    assert changed.status_code == 302
    added, edited = entries()
    assert added[:6] == ("admin.meter_added", "fin", fin.pk, "metering.meter", str(meter.pk), "")
    assert added[6]["fields"] == {
        "code": {"from": None, "to": "gpu_seconds"},
        "name": {"from": None, "to": "GPU seconds"},
        "unit": {"from": None, "to": "second"},
        "aggregation": {"from": None, "to": "sum"},
    }
    assert edited[:5] == ("admin.meter_changed", "fin", fin.pk, "metering.meter", str(meter.pk))
    assert edited[6] == {
        "object": "gpu_seconds",
        "changes": [{"changed": {"fields": ["Unit", "Is active"]}}],
        "fields": {
            "unit": {"from": "second", "to": "s"},
            "is_active": {"from": True, "to": False},
        },
    }


# --- API keys -----------------------------------------------------------------------------


KEY_IN_MESSAGE = re.compile(r"shown only once: (\S+)$")


def test_issuing_a_key_is_audited_without_the_key(finance, fin, customer):
    response = finance.post(
        "/admin/metering/apikey/add/",
        {"name": "fleet", "customer": str(customer.pk), "expires_at_0": "", "expires_at_1": ""},
        follow=True,
    )

    assert response.status_code == 200
    [plaintext] = [KEY_IN_MESSAGE.search(m).group(1) for m in shown_messages(response)[:1]]
    key = ApiKey.objects.get(name="fleet")
    [(action, actor, actor_id, object_type, object_id, external_id, data)] = entries()
    assert (action, actor, actor_id, object_type, object_id, external_id) == (
        "admin.apikey_added",
        "fin",
        fin.pk,
        "metering.apikey",
        str(key.pk),
        "acme",
    )
    assert data == {
        "object": f"fleet ({key.prefix}…)",
        "changes": [{"added": {}}],
        "fields": {
            "name": {"from": None, "to": "fleet"},
            "customer": {"from": None, "to": customer.pk},
        },
    }
    stored = json.dumps(list(AuditEntry.objects.values()), default=str)
    secret = plaintext.rsplit("_", 1)[1]
    assert plaintext not in stored and secret not in stored and key.key_hash not in stored


def test_revoking_a_key_is_audited_once_with_the_user_and_the_time(finance, fin, service_key):
    key = service_key[0]
    revoke = {"action": "revoke_keys", "_selected_action": [key.pk]}

    with time_machine.travel(AT, tick=False):
        response = finance.post("/admin/metering/apikey/", revoke)

    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at == AT
    assert entries() == [
        (
            "admin.apikey_revoke_keys",
            "fin",
            fin.pk,
            "metering.apikey",
            str(key.pk),
            "",
            {"object": str(key), "fields": {"revoked_at": {"from": None, "to": AT_JSON}}},
        )
    ]
    stored = json.dumps(list(AuditEntry.objects.values()), default=str)
    assert key.key_hash not in stored and service_key[1] not in stored

    # Again: the first revocation time is kept; the run is logged, changing nothing.
    with time_machine.travel(AT.replace(hour=13), tick=False):
        assert finance.post("/admin/metering/apikey/", revoke).status_code == 302
    key.refresh_from_db()
    assert key.revoked_at == AT
    assert [(e[0], e[1], e[6]) for e in entries()[1:]] == [
        ("admin.apikey_revoke_keys", "fin", {"object": str(key), "fields": {}}),
    ]


def test_renaming_a_key_is_audited(finance, fin, service_key):
    key = service_key[0]
    response = finance.post(
        f"/admin/metering/apikey/{key.pk}/change/",
        {"name": "renamed", "expires_at_0": "", "expires_at_1": ""},
    )
    assert response.status_code == 302
    [(action, actor, _, _, object_id, _, data)] = entries()
    assert (action, actor, object_id) == ("admin.apikey_changed", "fin", str(key.pk))
    assert data["fields"] == {"name": {"from": "service", "to": "renamed"}}


# --- Saves and actions audited by their services, third-party admins -----------------------


def test_a_save_whose_service_audits_it_is_not_audited_twice(finance, fin):
    plan = plans.create_plan_version(
        code="basic", name="Basic", currency="USD", interval="hour", prices=[]
    )
    customer = CustomerFactory(external_id="initech", currency="USD")
    before = AuditEntry.objects.count()  # the plan's own entry
    response = finance.post(
        "/admin/invoicing/subscription/add/",
        {"customer": str(customer.pk), "plan": str(plan.pk)},
    )
    assert response.status_code == 302
    subscription = Subscription.objects.get(customer=customer)
    assert [(e[0], e[1], e[3], e[4]) for e in entries()[before:]] == [
        ("subscription.created", "fin", "invoicing.subscription", str(subscription.pk)),
    ]


def test_third_party_admins_are_audited_and_passwords_never_written(admin_client, admin_user):
    permission = Permission.objects.get(codename="view_customer")
    added = admin_client.post(
        "/admin/auth/group/add/", {"name": "Auditors", "permissions": [permission.pk]}
    )
    assert added.status_code == 302
    group = Group.objects.get(name="Auditors")

    staff = User.objects.create_user("sam", password="old-password-1", is_staff=True)
    changed = admin_client.post(
        f"/admin/auth/user/{staff.pk}/password/",
        {"password1": "new-password-42", "password2": "new-password-42", "usable_password": "true"},
    )
    assert changed.status_code == 302
    staff.refresh_from_db()
    assert staff.check_password("new-password-42")

    group_entry, password_entry = entries()
    assert group_entry[:6] == (
        "admin.group_added",
        "admin",
        admin_user.pk,
        "auth.group",
        str(group.pk),
        "",
    )
    assert group_entry[6]["fields"] == {
        "name": {"from": None, "to": "Auditors"},
        "permissions": {"from": None, "to": [permission.pk]},
    }
    assert password_entry[:5] == (
        "admin.user_changed",
        "admin",
        admin_user.pk,
        "auth.user",
        str(staff.pk),
    )
    stored = json.dumps(list(AuditEntry.objects.values()), default=str)
    assert "new-password-42" not in stored and staff.password not in stored


# --- The rules for actions, on a throw-away admin -----------------------------------------


class ThrowAwayMeterAdmin(admin.ModelAdmin):
    actions = ["rename", "notify", "refuse", "confirm", "rename_then_fail"]

    @admin.action(description="Rename")
    def rename(self, request, queryset):
        queryset.update(name="Renamed")
        self.message_user(request, "Renamed.", messages.SUCCESS)

    @admin.action(description="Notify (acts outside the rows)")
    def notify(self, request, queryset):
        mail.send_mail("meters", "look", "billing@localhost", ["ops@localhost"])
        self.message_user(request, "Sent.")

    @admin.action(description="Refuse")
    def refuse(self, request, queryset):
        self.message_user(request, "Not now.", messages.WARNING)
        self.message_user(request, "Really not.", "error")

    @admin.action(description="Confirm first")
    def confirm(self, request, queryset):
        return TemplateResponse(request, "admin/base.html", {})

    @admin.action(description="Rename, then fail")
    def rename_then_fail(self, request, queryset):
        queryset.update(name="Half done")
        raise RuntimeError("boom")


@pytest.fixture
def throw_away(fin):
    site = BillingAdminSite(name="throw_away")
    site.register(Meter, ThrowAwayMeterAdmin)
    model_admin = site._registry[Meter]
    request = RequestFactory().post("/")
    request.user = fin
    request._messages = CookieStorage(request)

    def run(action: str, meters):
        func = model_admin.get_actions(request)[action][0]
        queryset = Meter.objects.filter(pk__in=[m.pk for m in meters])
        return func(model_admin, request, queryset)

    return run


@pytest.fixture
def two_meters(db):
    return [MeterFactory(code="m1", name="One"), MeterFactory(code="m2", name="Two")]


def test_an_action_that_changes_its_rows_records_each_change(throw_away, two_meters, fin):
    throw_away("rename", two_meters)
    assert [(e[0], e[1], e[2], e[4], e[6]) for e in entries()] == [
        (
            "admin.meter_rename",
            "fin",
            fin.pk,
            str(meter.pk),
            {"object": meter.code, "fields": {"name": {"from": meter.name, "to": "Renamed"}}},
        )
        for meter in two_meters
    ]
    throw_away("rename", two_meters)  # nothing left to change: recorded, with no field changes
    assert [e[6] for e in entries()[2:]] == [
        {"object": "m1", "fields": {}},
        {"object": "m2", "fields": {}},
    ]


def test_an_action_acting_elsewhere_is_recorded_per_selected_row(throw_away, two_meters):
    throw_away("notify", two_meters[:1])
    assert len(mail.outbox) == 1
    assert [(e[0], e[4], e[6]) for e in entries()] == [
        ("admin.meter_notify", str(two_meters[0].pk), {"object": "m1", "fields": {}}),
    ]


def test_refusals_and_confirmation_pages_write_nothing(throw_away, two_meters):
    throw_away("refuse", two_meters)
    assert isinstance(throw_away("confirm", two_meters), TemplateResponse)
    assert entries() == []


def test_an_action_that_fails_records_what_it_changed_before(throw_away, two_meters):
    with pytest.raises(RuntimeError, match="boom"):
        throw_away("rename_then_fail", two_meters[:1])
    assert [(e[0], e[6]) for e in entries()] == [
        (
            "admin.meter_rename_then_fail",
            {"object": "m1", "fields": {"name": {"from": "One", "to": "Half done"}}},
        )
    ]


def test_inline_rows_are_recorded_with_their_values(finance, fin, meters):
    plan = plans.create_plan_version(
        code="lite", name="Lite", currency="USD", interval="month", prices=[]
    )
    before = AuditEntry.objects.count()
    response = finance.post(
        "/admin/invoicing/price/add/",
        _price_post(plan, meters["llm_tokens"], [("1000000", "0.002"), ("", "0.001")]),
    )
    assert response.status_code == 302
    price = Price.objects.get(plan=plan)
    first, second = price.tiers.order_by("position")
    [(action, actor, _, _, object_id, _, data)] = entries()[before:]
    assert (action, actor, object_id) == ("admin.price_added", "fin", str(price.pk))
    assert data["fields"] == {
        "plan": {"from": None, "to": plan.pk},
        "meter": {"from": None, "to": meters["llm_tokens"].pk},
        "model": {"from": None, "to": "graduated"},
    }
    assert data["inlines"] == [
        {
            "object_type": "invoicing.pricetier",
            "object_id": str(tier.pk),
            "object": text,  # as saved from the form, before the database quantized up_to
            "fields": {
                "position": {"from": None, "to": position},
                **({"up_to": {"from": None, "to": up_to}} if up_to else {}),
                "unit_amount_minor": {"from": "0", "to": unit_amount},  # the model's default
            },
        }
        for tier, text, position, up_to, unit_amount in [
            (first, "tier 1 up to 1000000", 1, "1000000", "0.002"),
            (second, "tier 2 up to ∞", 2, None, "0.001"),
        ]
    ]
