"""A meter with usage keeps its code, aggregation and unique property: the database refuses
an UPDATE that changes one of them once the meter has events (a trigger, on PostgreSQL and on
SQLite alike), whatever the path; metering.services.save_meter gives the same refusal as a
domain error first."""

from django.db import migrations

MESSAGE = "meter has usage: its code, aggregation and unique_property cannot change"

POSTGRESQL = f"""
CREATE OR REPLACE FUNCTION metering_meter_keeps_its_meaning() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM metering_usageevent WHERE meter_id = OLD.id) THEN
        RAISE EXCEPTION '{MESSAGE} (meter %)', OLD.code
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER metering_meter_keeps_its_meaning
    BEFORE UPDATE OF code, aggregation, unique_property ON metering_meter
    FOR EACH ROW
    WHEN (OLD.code IS DISTINCT FROM NEW.code
          OR OLD.aggregation IS DISTINCT FROM NEW.aggregation
          OR OLD.unique_property IS DISTINCT FROM NEW.unique_property)
    EXECUTE FUNCTION metering_meter_keeps_its_meaning();
"""
POSTGRESQL_DROP = """
DROP TRIGGER IF EXISTS metering_meter_keeps_its_meaning ON metering_meter;
DROP FUNCTION IF EXISTS metering_meter_keeps_its_meaning();
"""

SQLITE = f"""
CREATE TRIGGER metering_meter_keeps_its_meaning
    BEFORE UPDATE OF code, aggregation, unique_property ON metering_meter
    FOR EACH ROW
    WHEN (OLD.code IS NOT NEW.code
          OR OLD.aggregation IS NOT NEW.aggregation
          OR OLD.unique_property IS NOT NEW.unique_property)
         AND EXISTS (SELECT 1 FROM metering_usageevent WHERE meter_id = OLD.id)
BEGIN
    SELECT RAISE(ABORT, '{MESSAGE}');
END
"""
SQLITE_DROP = "DROP TRIGGER IF EXISTS metering_meter_keeps_its_meaning"


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRESQL, params=None)
    elif vendor == "sqlite":
        schema_editor.execute(SQLITE, params=None)


def backwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRESQL_DROP, params=None)
    elif vendor == "sqlite":
        schema_editor.execute(SQLITE_DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("metering", "0011_budgets_moved_out")]
    operations = [migrations.RunPython(forwards, backwards)]
