"""A plan version in use is immutable, its rate cards too: the rules (PriceRate) and their
tiers (PriceRateTier) of a version that a billing period uses cannot be inserted, updated or
deleted, on PostgreSQL and (insert, update) SQLite, exactly as migration 0009 does for prices
and tiers (it defines `invoicing_refuse_if_plan_in_use` on PostgreSQL, reused here).
"""

from django.db import migrations

MESSAGE = "plan version is used by billing periods: it cannot change (create a new version)"

POSTGRESQL = """
CREATE OR REPLACE FUNCTION invoicing_pricerate_immutable_in_use() RETURNS trigger AS $$
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

CREATE OR REPLACE FUNCTION invoicing_priceratetier_immutable_in_use() RETURNS trigger AS $$
DECLARE
    plan bigint;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        SELECT p.plan_id INTO plan FROM invoicing_pricerate r
            JOIN invoicing_price p ON p.id = r.price_id WHERE r.id = OLD.rate_id;
        IF plan IS NOT NULL THEN
            PERFORM invoicing_refuse_if_plan_in_use(plan);
        END IF;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT p.plan_id INTO plan FROM invoicing_pricerate r
            JOIN invoicing_price p ON p.id = r.price_id WHERE r.id = NEW.rate_id;
        IF plan IS NOT NULL THEN
            PERFORM invoicing_refuse_if_plan_in_use(plan);
        END IF;
        RETURN NEW;
    END IF;
    RETURN OLD;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER invoicing_pricerate_immutable_in_use
    BEFORE INSERT OR UPDATE OR DELETE ON invoicing_pricerate
    FOR EACH ROW EXECUTE FUNCTION invoicing_pricerate_immutable_in_use();
CREATE TRIGGER invoicing_priceratetier_immutable_in_use
    BEFORE INSERT OR UPDATE OR DELETE ON invoicing_priceratetier
    FOR EACH ROW EXECUTE FUNCTION invoicing_priceratetier_immutable_in_use();
"""
POSTGRESQL_DROP = """
DROP TRIGGER IF EXISTS invoicing_pricerate_immutable_in_use ON invoicing_pricerate;
DROP TRIGGER IF EXISTS invoicing_priceratetier_immutable_in_use ON invoicing_priceratetier;
DROP FUNCTION IF EXISTS invoicing_pricerate_immutable_in_use();
DROP FUNCTION IF EXISTS invoicing_priceratetier_immutable_in_use();
"""

# SQLite: as in 0009, no DELETE triggers (a transactional test's flush deletes in any order).
_IN_USE = "EXISTS (SELECT 1 FROM invoicing_billingperiod WHERE plan_id = {plan})"
_RATE_PLAN = "(SELECT plan_id FROM invoicing_price WHERE id = {row}.price_id)"
_TIER_PLAN = (
    "(SELECT p.plan_id FROM invoicing_pricerate r JOIN invoicing_price p ON p.id = r.price_id "
    "WHERE r.id = {row}.rate_id)"
)
_SQLITE_CHECKS = {
    "invoicing_pricerate_immutable_in_use_insert": (
        "INSERT ON invoicing_pricerate",
        _IN_USE.format(plan=_RATE_PLAN.format(row="NEW")),
    ),
    "invoicing_pricerate_immutable_in_use_update": (
        "UPDATE ON invoicing_pricerate",
        f"{_IN_USE.format(plan=_RATE_PLAN.format(row='OLD'))} "
        f"OR {_IN_USE.format(plan=_RATE_PLAN.format(row='NEW'))}",
    ),
    "invoicing_priceratetier_immutable_in_use_insert": (
        "INSERT ON invoicing_priceratetier",
        _IN_USE.format(plan=_TIER_PLAN.format(row="NEW")),
    ),
    "invoicing_priceratetier_immutable_in_use_update": (
        "UPDATE ON invoicing_priceratetier",
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
    dependencies = [("invoicing", "0010_rate_cards")]
    operations = [migrations.RunPython(forwards, backwards)]
