"""The audit log moved from invoicing to the audit app without moving a row: same table, same
trigger, and the permissions granted on it kept."""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Group, Permission, User
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import DeleteModel, SeparateDatabaseAndState

from audit.models import AuditEntry

pytestmark = pytest.mark.django_db


def _move_migration():
    """invoicing's migration that hands the model over (found by what it does)."""
    loader = MigrationLoader(connection, ignore_no_migrations=True)
    for (app_label, _), migration in loader.disk_migrations.items():
        for operation in migration.operations:
            if app_label == "invoicing" and isinstance(operation, SeparateDatabaseAndState):
                if any(
                    isinstance(op, DeleteModel) and op.name == "AuditEntry"
                    for op in operation.state_operations
                ):
                    return migration
    raise AssertionError("no invoicing migration removes AuditEntry")


def test_the_model_keeps_the_table_and_its_trigger():
    assert AuditEntry._meta.db_table == "invoicing_auditentry"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'invoicing_auditentry'::regclass"
            " AND NOT tgisinternal"
        )
        assert cursor.fetchall() == [("invoicing_auditentry_append_only",)]


def test_the_move_changes_only_django_state():
    audit_initial = importlib.import_module("audit.migrations.0001_initial").Migration
    for migration in (audit_initial, _move_migration()):
        moves = [op for op in migration.operations if isinstance(op, SeparateDatabaseAndState)]
        assert moves and all(op.database_operations == [] for op in moves), migration


def test_the_finance_group_still_sees_the_log():
    assert not ContentType.objects.filter(app_label="invoicing", model="auditentry").exists()
    finance = Group.objects.get(name="Finance")
    assert finance.permissions.filter(
        content_type__app_label="audit", codename="view_auditentry"
    ).exists()


def _forwards():
    module = importlib.import_module(_move_migration().__module__)
    module.forwards(apps, None)


def test_moving_the_content_type_keeps_the_grants():
    audit_type = ContentType.objects.get(app_label="audit", model="auditentry")
    audit_type.app_label = "invoicing"  # as before the move
    audit_type.save()
    view = Permission.objects.get(content_type=audit_type, codename="view_auditentry")

    _forwards()
    _forwards()  # nothing left to move

    audit_type.refresh_from_db()
    assert audit_type.app_label == "audit"
    assert Group.objects.get(name="Finance").permissions.filter(pk=view.pk).exists()


def test_when_both_types_exist_the_grants_and_history_move_to_the_new_one():
    new = ContentType.objects.get(app_label="audit", model="auditentry")
    old = ContentType.objects.create(app_label="invoicing", model="auditentry")
    old_view = Permission.objects.create(
        content_type=old, codename="view_auditentry", name="Can view audit entry"
    )
    auditors = Group.objects.create(name="Auditors")
    auditors.permissions.add(old_view)
    viewer = User.objects.create_user("vic")
    history = LogEntry.objects.create(
        user=viewer, content_type=old, object_id="1", object_repr="entry", action_flag=CHANGE
    )

    _forwards()

    assert not ContentType.objects.filter(pk=old.pk).exists()
    assert list(auditors.permissions.values_list("content_type", "codename")) == [
        (new.pk, "view_auditentry")
    ]
    history.refresh_from_db()
    assert history.content_type_id == new.pk
