"""The audit log is append-only: PostgreSQL refuses UPDATE and DELETE on it, whatever the path."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction

from audit.models import AuditEntry
from audit.services import record_audit

pytestmark = pytest.mark.django_db
INSUFFICIENT_PRIVILEGE = "42501"  # the SQLSTATE the trigger raises


@pytest.fixture
def entry(customer):
    return record_audit(
        action="invoice.finalized",
        obj=customer,
        customer_external_id="acme",
        data={"number": "INV-2026-000001", "total_minor": 2915},
    )


def stored(entry: AuditEntry) -> dict:
    return AuditEntry.objects.filter(pk=entry.pk).values().get()


def refused(operation: str):
    """Expect the trigger's refusal; the savepoint keeps the test's transaction usable."""
    return pytest.raises(DatabaseError, match=f"append-only: {operation} refused")


def test_the_database_is_postgresql():
    assert connection.vendor == "postgresql"  # the trigger exists only there


def test_raw_sql_update_and_delete_are_refused(entry):
    before = stored(entry)
    with refused("UPDATE") as update, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "UPDATE invoicing_auditentry SET actor = %s, data = '{}' WHERE id = %s",
            ["mallory", entry.pk],
        )
    assert update.value.__cause__.sqlstate == INSUFFICIENT_PRIVILEGE
    with refused("DELETE") as delete, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM invoicing_auditentry WHERE id = %s", [entry.pk])
    assert delete.value.__cause__.sqlstate == INSUFFICIENT_PRIVILEGE
    assert stored(entry) == before


def test_orm_update_and_delete_are_refused(entry):
    before = stored(entry)
    with refused("UPDATE"), transaction.atomic():
        AuditEntry.objects.filter(pk=entry.pk).update(actor="mallory")
    with refused("DELETE"), transaction.atomic():
        AuditEntry.objects.filter(pk=entry.pk).delete()
    with refused("DELETE"), transaction.atomic():
        AuditEntry.objects.all().delete()
    entry.action = "invoice.void"
    with refused("UPDATE"), transaction.atomic():
        entry.save()
    with refused("DELETE"), transaction.atomic():
        entry.delete()
    assert stored(entry) == before
    assert AuditEntry.objects.count() == 1


def test_appending_still_works_after_a_refusal(entry, customer):
    with refused("UPDATE"), transaction.atomic():
        AuditEntry.objects.update(actor="mallory")
    second = record_audit(action="period.closed", obj=customer)
    assert list(AuditEntry.objects.order_by("id").values_list("pk", "action", "actor")) == [
        (entry.pk, "invoice.finalized", "system"),
        (second.pk, "period.closed", "system"),
    ]
