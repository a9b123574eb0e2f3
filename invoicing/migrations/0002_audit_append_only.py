"""Make the audit log append-only in PostgreSQL: a trigger refuses UPDATE and DELETE."""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION invoicing_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'invoicing_auditentry is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER invoicing_auditentry_append_only
    BEFORE UPDATE OR DELETE ON invoicing_auditentry
    FOR EACH ROW EXECUTE FUNCTION invoicing_audit_append_only();
"""
DROP = """
DROP TRIGGER IF EXISTS invoicing_auditentry_append_only ON invoicing_auditentry;
DROP FUNCTION IF EXISTS invoicing_audit_append_only();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("invoicing", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
