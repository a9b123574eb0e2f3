"""The other agent-API endpoints, health, the schema, and the key and demo commands."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from metering import services
from metering.keys import hash_key
from metering.models import ApiKey, Customer, Meter, PortalMembership
from tests.factories import CustomerFactory, MeterFactory

pytestmark = pytest.mark.django_db

CUSTOMERS_URL = "/api/v1/customers"
KEY_PATTERN = re.compile(r"mk_[A-Za-z0-9]{8}_[A-Za-z0-9]{40}")


def _client(plaintext: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client


def _customer_row(external_id: str) -> dict:
    return Customer.objects.filter(external_id=external_id).values(
        "external_id", "name", "emails", "currency", "timezone", "status"
    )[0]


NEW_CUSTOMER = {
    "customer_id": "initech",
    "name": "Initech",
    "emails": ["ap@initech.example", "cfo@initech.example"],
    "currency": "EUR",
    "timezone": "Europe/Paris",
}


# --- POST /api/v1/customers -------------------------------------------------------------------


def test_posting_a_new_customer_creates_it(api):
    response = api.post(CUSTOMERS_URL, NEW_CUSTOMER, format="json")

    assert response.status_code == 201, response.content
    assert response.json() == {
        "customer_id": "initech",
        "name": "Initech",
        "emails": ["ap@initech.example", "cfo@initech.example"],
        "currency": "EUR",
        "timezone": "Europe/Paris",
        "status": "active",
    }
    assert _customer_row("initech") == {
        "external_id": "initech",
        "name": "Initech",
        "emails": ["ap@initech.example", "cfo@initech.example"],
        "currency": "EUR",
        "timezone": "Europe/Paris",
        "status": "active",
    }


def test_posting_a_known_customer_updates_the_given_fields_and_keeps_the_others(api):
    assert api.post(CUSTOMERS_URL, NEW_CUSTOMER, format="json").status_code == 201

    update = {"customer_id": "initech", "name": "Initech GmbH", "timezone": "Europe/Berlin"}
    first = api.post(CUSTOMERS_URL, update, format="json")
    second = api.post(CUSTOMERS_URL, update, format="json")

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    expected = {
        "external_id": "initech",
        "name": "Initech GmbH",
        "emails": ["ap@initech.example", "cfo@initech.example"],
        "currency": "EUR",
        "timezone": "Europe/Berlin",
        "status": "active",
    }
    assert _customer_row("initech") == expected
    assert Customer.objects.count() == 1


def test_a_new_customer_with_only_an_id_gets_the_defaults(api):
    response = api.post(CUSTOMERS_URL, {"customer_id": "bare"}, format="json")

    assert response.status_code == 201, response.content
    assert _customer_row("bare") == {
        "external_id": "bare",
        "name": "bare",
        "emails": [],
        "currency": "USD",
        "timezone": "UTC",
        "status": "active",
    }


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        pytest.param({**NEW_CUSTOMER, "currency": "XYZ"}, ["currency"], id="bad-currency"),
        pytest.param({**NEW_CUSTOMER, "currency": "usd"}, ["currency"], id="lowercase-currency"),
        pytest.param({**NEW_CUSTOMER, "timezone": "Mars/Olympus"}, ["timezone"], id="bad-tz"),
        pytest.param(
            {**NEW_CUSTOMER, "timezone": "../../etc/passwd"}, ["timezone"], id="path-as-tz"
        ),
        pytest.param({**NEW_CUSTOMER, "emails": ["not-an-email"]}, ["emails[0]"], id="bad-email"),
        pytest.param(
            {**NEW_CUSTOMER, "emails": ["ok@initech.example", "nope"]},
            ["emails[1]"],
            id="second-email-bad",
        ),
        pytest.param({**NEW_CUSTOMER, "emails": "ap@initech.example"}, ["emails"], id="emails-str"),
        pytest.param(
            {k: v for k, v in NEW_CUSTOMER.items() if k != "customer_id"},
            ["customer_id"],
            id="missing-customer-id",
        ),
        pytest.param({**NEW_CUSTOMER, "customer_id": "has space"}, ["customer_id"], id="id-space"),
        pytest.param(
            {**NEW_CUSTOMER, "currency": "XYZ", "timezone": "Nowhere"},
            ["currency", "timezone"],
            id="two-bad-fields",
        ),
    ],
)
def test_invalid_customer_input_is_422_naming_the_fields_and_changes_nothing(
    api, customer, payload, fields
):
    before = list(Customer.objects.values())

    response = api.post(CUSTOMERS_URL, payload, format="json")

    assert response.status_code == 422, response.content
    errors = response.json()["errors"]
    assert [error["field"] for error in errors] == fields
    assert all(error["index"] is None and error["message"] for error in errors)
    assert list(Customer.objects.values()) == before


def test_a_lone_surrogate_in_a_customer_name_is_422(api):
    body = b'{"customer_id": "initech", "name": "\\ud800"}'

    response = api.generic("POST", CUSTOMERS_URL, body, content_type="application/json")

    assert response.status_code == 422, response.content
    assert [error["field"] for error in response.json()["errors"]] == ["name"]
    assert Customer.objects.count() == 0


def test_customers_needs_a_service_wide_key(customer, other_customer):
    _, plaintext = services.create_api_key(name="acme fleet", customer=customer)
    before = list(Customer.objects.values())

    response = _client(plaintext).post(CUSTOMERS_URL, NEW_CUSTOMER, format="json")
    update = _client(plaintext).post(
        CUSTOMERS_URL, {"customer_id": "acme", "name": "Renamed"}, format="json"
    )

    assert response.status_code == update.status_code == 403
    assert response.json() == {
        "errors": [
            {"index": None, "field": None, "message": "this endpoint needs a service-wide API key"}
        ]
    }
    assert list(Customer.objects.values()) == before


def test_customers_without_a_key_is_401(customer):
    response = APIClient().post(CUSTOMERS_URL, NEW_CUSTOMER, format="json")

    assert response.status_code == 401
    assert response.json()["errors"][0]["field"] == "authorization"
    assert not Customer.objects.filter(external_id="initech").exists()


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        pytest.param(b"{not json", "application/json", 400, id="not-json"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "application/json", 400, id="deep"),
        pytest.param(b'{"customer_id": NaN}', "application/json", 400, id="nan"),
        pytest.param(b"[]", "application/json", 422, id="array"),
        pytest.param(b"customer_id=x", "application/x-www-form-urlencoded", 415, id="form"),
    ],
)
def test_malformed_customer_bodies_are_client_errors(api, body, content_type, status):
    response = api.generic("POST", CUSTOMERS_URL, body, content_type=content_type)

    assert response.status_code == status, response.content
    assert set(response.json()) == {"errors"}
    assert Customer.objects.count() == 0


# --- GET /api/v1/meters -----------------------------------------------------------------------


def test_meters_lists_only_the_active_ones(api, meters):
    MeterFactory(code="retired", name="Retired", unit="thing", is_active=False)
    MeterFactory(
        code="distinct_agents",
        name="Distinct agents",
        unit="agent",
        aggregation="unique_count",
        unique_property="agent_id",
    )

    response = api.get("/api/v1/meters")

    assert response.status_code == 200
    assert response.json() == [
        {"code": "agent_minutes", "name": "Agent Minutes", "unit": "minute", "aggregation": "sum"},
        {"code": "agent_tasks", "name": "Agent Tasks", "unit": "task", "aggregation": "count"},
        {
            "code": "distinct_agents",
            "name": "Distinct agents",
            "unit": "agent",
            "aggregation": "unique_count",
        },
        {"code": "llm_tokens", "name": "Llm Tokens", "unit": "token", "aggregation": "sum"},
    ]


def test_meters_accepts_a_scoped_key_and_refuses_no_key(customer, meters):
    _, plaintext = services.create_api_key(name="acme fleet", customer=customer)

    assert _client(plaintext).get("/api/v1/meters").status_code == 200
    assert APIClient().get("/api/v1/meters").status_code == 401


# --- health and schema ------------------------------------------------------------------------


def test_healthz_reports_database_and_broker(client):
    response = client.get("/healthz")

    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok"}


def test_the_schema_describes_the_ingestion_endpoint(client):
    response = client.get("/api/schema/")

    assert response.status_code == 200
    text = response.content.decode()
    assert "openapi: 3" in text
    assert "/api/v1/events:" in text
    assert "/api/v1/meters:" in text


# --- create_api_key ---------------------------------------------------------------------------


def _run(*args, **options) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def test_create_api_key_prints_the_key_alone_on_the_last_line_and_it_works(meters):
    out, err = _run("create_api_key", "fleet one")

    plaintext = out.splitlines()[-1]
    assert KEY_PATTERN.fullmatch(plaintext)
    assert plaintext not in err
    key = ApiKey.objects.get()
    assert (key.name, key.customer_id, key.revoked_at) == ("fleet one", None, None)
    assert key.key_hash == hash_key(plaintext)
    assert plaintext.startswith(f"mk_{key.prefix}_")
    assert not ApiKey.objects.filter(key_hash=plaintext).exists()
    assert _client(plaintext).get("/api/v1/meters").status_code == 200


def test_create_api_key_for_a_customer_makes_a_scoped_key(customer, meters):
    out, _ = _run("create_api_key", "acme fleet", "--customer", "acme")

    plaintext = out.splitlines()[-1]
    assert KEY_PATTERN.fullmatch(plaintext)
    assert ApiKey.objects.get().customer_id == customer.pk
    client = _client(plaintext)
    assert client.get("/api/v1/meters").status_code == 200
    assert client.post(CUSTOMERS_URL, {"customer_id": "x"}, format="json").status_code == 403


def test_create_api_key_for_an_unknown_customer_fails_and_creates_nothing(customer):
    with pytest.raises(CommandError, match="no customer with external id 'unknown'"):
        _run("create_api_key", "fleet", "--customer", "unknown")

    assert ApiKey.objects.count() == 0


# --- seed_demo --------------------------------------------------------------------------------


def _demo_counts() -> dict[str, int]:
    return {
        "users": User.objects.count(),
        "customers": Customer.objects.count(),
        "meters": Meter.objects.count(),
        "keys": ApiKey.objects.count(),
        "memberships": PortalMembership.objects.count(),
    }


def test_seed_demo_twice_creates_the_demo_rows_once(tmp_path):
    key_file = tmp_path / "var" / "demo-api-key"

    first_out, _ = _run("seed_demo", key_file=str(key_file))
    after_first = _demo_counts()
    key_text = key_file.read_text()
    second_out, _ = _run("seed_demo", key_file=str(key_file))

    assert after_first == {
        "users": 4,
        "customers": 3,
        "meters": 3,
        "keys": 1,
        "memberships": 3,
    }
    assert _demo_counts() == after_first
    assert key_file.read_text() == key_text
    plaintext = key_text.strip()
    assert first_out.splitlines()[-1] == second_out.splitlines()[-1] == plaintext
    assert first_out == second_out
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert sorted(Customer.objects.values_list("external_id", "currency", "timezone")) == [
        ("acme", "USD", "America/New_York"),
        ("globex", "EUR", "Europe/Berlin"),
        ("initech", "USD", "UTC"),
    ]
    assert sorted(Meter.objects.values_list("code", "aggregation")) == [
        ("agent_minutes", "sum"),
        ("agent_tasks", "count"),
        ("llm_tokens", "sum"),
    ]
    assert User.objects.get(username="finance").groups.filter(name="Finance").exists()
    assert _client(plaintext).get("/api/v1/meters").status_code == 200


def test_seed_demo_replaces_a_revoked_demo_key(tmp_path):
    key_file = tmp_path / "demo-api-key"
    _run("seed_demo", key_file=str(key_file))
    old = key_file.read_text().strip()
    services.revoke_api_key(api_key=ApiKey.objects.get())

    out, _ = _run("seed_demo", key_file=str(key_file))

    new = key_file.read_text().strip()
    assert new != old
    assert out.splitlines()[-1] == new
    assert ApiKey.objects.filter(revoked_at__isnull=True).count() == 1
    assert _client(new).get("/api/v1/meters").status_code == 200


def test_seed_demo_keeps_existing_customer_data(tmp_path):
    CustomerFactory(external_id="acme", name="Acme (edited)", timezone="Asia/Tokyo")

    _run("seed_demo", key_file=str(tmp_path / "key"))

    assert _customer_row("acme")["name"] == "Acme (edited)"
    assert _customer_row("acme")["timezone"] == "Asia/Tokyo"
