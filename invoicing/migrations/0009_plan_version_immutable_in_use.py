"""A plan version in use is immutable: once a billing period uses a plan version, the
database refuses any UPDATE of its row and any INSERT, UPDATE or DELETE of its prices and
their tiers, whatever the path (triggers); the admin goes through
invoicing.services.plans.ensure_plan_version_editable, which refuses first with a domain
error. The prices of a period are kept in each process for minutes on this promise
(invoicing.selectors.period_price_specs).

On PostgreSQL the check locks the version's row (FOR UPDATE, which conflicts with the
key-share lock a new period's foreign key takes at commit), so a period created meanwhile
waits and the check cannot be raced. On SQLite (the embedded default, one writer at a time)
the triggers refuse the UPDATEs and INSERTs; a DELETE of a price or tier is refused by the
services and the admin only (see below).
"""

from django.db import migrations

MESSAGE = "plan version is used by billing periods: it cannot change (create a new version)"

POSTGRESQL = f"""
CREATE OR REPLACE FUNCTION invoicing_refuse_if_plan_in_use(plan bigint) RETURNS void AS $$
BEGIN
    PERFORM 1 FROM invoicing_priceplan WHERE id = plan FOR UPDATE;
    IF EXISTS (SELECT 1 FROM invoicing_billingperiod WHERE plan_id = plan) THEN
        RAISE EXCEPTION '{MESSAGE} (plan version %)', plan
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION invoicing_priceplan_immutable_in_use() RETURNS trigger AS $$
BEGIN
    PERFORM invoicing_refuse_if_plan_in_use(OLD.id);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION invoicing_price_immutable_in_use() RETURNS trigger AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM invoicing_refuse_if_plan_in_use(OLD.plan_id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM invoicing_refuse_if_plan_in_use(NEW.plan_id);
        RETURN NEW;
    END IF;
    RETURN OLD;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION invoicing_pricetier_immutable_in_use() RETURNS trigger AS $$
DECLARE
    plan bigint;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        SELECT plan_id INTO plan FROM invoicing_price WHERE id = OLD.price_id;
        IF plan IS NOT NULL THEN
            PERFORM invoicing_refuse_if_plan_in_use(plan);
        END IF;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT plan_id INTO plan FROM invoicing_price WHERE id = NEW.price_id;
        IF plan IS NOT NULL THEN
            PERFORM invoicing_refuse_if_plan_in_use(plan);
        END IF;
        RETURN NEW;
    END IF;
    RETURN OLD;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER invoicing_priceplan_immutable_in_use
    BEFORE UPDATE ON invoicing_priceplan
    FOR EACH ROW EXECUTE FUNCTION invoicing_priceplan_immutable_in_use();
CREATE TRIGGER invoicing_price_immutable_in_use
    BEFORE INSERT OR UPDATE OR DELETE ON invoicing_price
    FOR EACH ROW EXECUTE FUNCTION invoicing_price_immutable_in_use();
CREATE TRIGGER invoicing_pricetier_immutable_in_use
    BEFORE INSERT OR UPDATE OR DELETE ON invoicing_pricetier
    FOR EACH ROW EXECUTE FUNCTION invoicing_pricetier_immutable_in_use();
"""
POSTGRESQL_DROP = """
DROP TRIGGER IF EXISTS invoicing_priceplan_immutable_in_use ON invoicing_priceplan;
DROP TRIGGER IF EXISTS invoicing_price_immutable_in_use ON invoicing_price;
DROP TRIGGER IF EXISTS invoicing_pricetier_immutable_in_use ON invoicing_pricetier;
DROP FUNCTION IF EXISTS invoicing_priceplan_immutable_in_use();
DROP FUNCTION IF EXISTS invoicing_price_immutable_in_use();
DROP FUNCTION IF EXISTS invoicing_pricetier_immutable_in_use();
DROP FUNCTION IF EXISTS invoicing_refuse_if_plan_in_use(bigint);
"""

# SQLite: one trigger per table and operation; `{plan}` is the version's id as the row sees it.
# No DELETE triggers there: Django empties a SQLite database with DELETE FROM each table in no
# particular order (a transactional test's flush), where PostgreSQL truncates (no row triggers);
# deleting a price of a version in use is refused by the services and the admin on SQLite.
_IN_USE = "EXISTS (SELECT 1 FROM invoicing_billingperiod WHERE plan_id = {plan})"
_TIER_PLAN = "(SELECT plan_id FROM invoicing_price WHERE id = {row}.price_id)"
_SQLITE_CHECKS = {
    # (trigger name, operation and table, condition)
    "invoicing_priceplan_immutable_in_use": (
        "UPDATE ON invoicing_priceplan",
        _IN_USE.format(plan="OLD.id"),
    ),
    "invoicing_price_immutable_in_use_insert": (
        "INSERT ON invoicing_price",
        _IN_USE.format(plan="NEW.plan_id"),
    ),
    "invoicing_price_immutable_in_use_update": (
        "UPDATE ON invoicing_price",
        f"{_IN_USE.format(plan='OLD.plan_id')} OR {_IN_USE.format(plan='NEW.plan_id')}",
    ),
    "invoicing_pricetier_immutable_in_use_insert": (
        "INSERT ON invoicing_pricetier",
        _IN_USE.format(plan=_TIER_PLAN.format(row="NEW")),
    ),
    "invoicing_pricetier_immutable_in_use_update": (
        "UPDATE ON invoicing_pricetier",
        f"{_IN_USE.format(plan=_TIER_PLAN.format(row='OLD'))} "
        f"OR {_IN_USE.format(plan=_TIER_PLAN.format(row='NEW'))}",
    ),
}
SQLITE = [
    f"CREATE TRIGGER {name} BEFORE {event} FOR EACH ROW WHEN {condition} "
    f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
    for name, (event, condition) in _SQLITE_CHECKS.items()
]
SQLITE_DROP = [f"DROP TRIGGER IF EXISTS {name}" for name in _SQLITE_CHECKS]


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRESQL, params=None)
    elif vendor == "sqlite":
        for statement in SQLITE:
            schema_editor.execute(statement, params=None)


def backwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRESQL_DROP, params=None)
    elif vendor == "sqlite":
        for statement in SQLITE_DROP:
            schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):
    dependencies = [("invoicing", "0008_auditentry_moved_to_audit")]
    operations = [migrations.RunPython(forwards, backwards)]
