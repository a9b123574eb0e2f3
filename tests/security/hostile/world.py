"""The data every hostile-input test attacks, and how to tell that nothing changed.

`build_world` makes two customers with portal logins (acme with a closed period, its draft
invoice, usage and a budget cap; globex with usage), a finance superuser, a service-wide key and
a key scoped to acme, all through the services. `table_counts` reads the row count of every
table in one query, so a test can compare before and after each request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from django.apps import apps
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.utils import timezone

from budgets import services as budget_services
from budgets.models import BudgetCap
from invoicing.models import BillingPeriod, Invoice
from metering import services as metering_services
from metering.models import ApiKey
from tests.metering.helpers import iso
from tests.portal.conftest import PortalCustomer, build_history, make_meters, make_portal_customer

STAFF_PASSWORD = "finance-password-1"
HOST = "billing.example"


@dataclass
class World:
    acme: PortalCustomer
    globex: PortalCustomer
    staff: User
    service_key: tuple[ApiKey, str]
    acme_key: tuple[ApiKey, str]
    invoice: Invoice
    clients: dict[str, Client] = field(default_factory=dict)


def api_client(plaintext: str, **defaults) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}", **defaults)


def build_world(**client_defaults) -> World:
    """The customers, users and keys; `client_defaults` go to every test client (e.g. the
    host and the proxy's HTTPS header for the production settings)."""
    make_meters()
    service_key = metering_services.create_api_key(name="service")
    acme = make_portal_customer("acme", tz="America/New_York")
    globex = make_portal_customer("globex", currency="EUR", tz="Europe/Berlin")
    acme_key = metering_services.create_api_key(name="acme", customer=acme.customer)
    invoice = build_history(acme, service_key[0], prefix="a")
    build_history(globex, service_key[0], prefix="b")
    budget_services.set_budget_cap(
        customer=acme.customer,
        cap_minor=10_000_000,
        thresholds=[50, 80, 100],
        action="pause",
        now=timezone.now(),
    )
    staff = User.objects.create_superuser("fran", "fran@operator.example", STAFF_PASSWORD)
    world = World(acme, globex, staff, service_key, acme_key, invoice)
    world.clients = {
        "anonymous": Client(**client_defaults),
        "key": api_client(service_key[1], **client_defaults),
        "acme_key": api_client(acme_key[1], **client_defaults),
        "portal": Client(**client_defaults),
        "staff": Client(**client_defaults),
    }
    world.clients["portal"].force_login(acme.user)
    world.clients["staff"].force_login(staff)
    return world


def world_values(world: World) -> dict[str, object]:
    """The ids the cases may name (`{invoice}`, ...)."""
    return {
        "invoice": world.invoice.pk,
        "period": world.acme.period.pk,
        "globex_period": BillingPeriod.objects.filter(customer=world.globex.customer)
        .order_by("pk")
        .first()
        .pk,
        "customer_pk": world.acme.customer.pk,
        "cap": BudgetCap.objects.get(customer=world.acme.customer).pk,
        "key_pk": world.service_key[0].pk,
        "staff_pk": world.staff.pk,
        "timestamp": iso(timezone.now() - timedelta(hours=1)),
    }


def _tables() -> list[str]:
    names = {model._meta.db_table for model in apps.get_models(include_auto_created=True)}
    return sorted(names)


def table_counts(*, exclude: frozenset[str] = frozenset()) -> dict[str, int]:
    """Rows per table of every installed model, read in one statement."""
    tables = [name for name in _tables() if name not in exclude]
    quote = connection.ops.quote_name
    # Table names come from the model registry, never from a request.
    columns = ", ".join(f"(SELECT count(*) FROM {quote(name)})" for name in tables)  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {columns}")
        return dict(zip(tables, cursor.fetchone(), strict=True))


def changed_tables(before: dict[str, int], after: dict[str, int]) -> dict[str, tuple[int, int]]:
    return {name: (before[name], after[name]) for name in before if before[name] != after[name]}
