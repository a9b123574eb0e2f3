"""PostgreSQL: move the events table to a table range-partitioned by month on `timestamp`.

Every row is copied (the migration checks the counts), the id sequence continues where it
was, and the indexes keep their names. Uniqueness of (customer, event_id) already lives in
UsageEventKey. SQLite keeps its plain table.
"""

from datetime import UTC, datetime, timedelta

from django.db import migrations

TABLE = "metering_usageevent"
COLUMNS = (
    "id, event_id, quantity, timestamp, properties, fingerprint, received_at, api_key_id, "
    "customer_id, meter_id"
)


def _month(moment, offset=0):
    index = moment.year * 12 + moment.month - 1 + offset
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        cursor.execute(f"SELECT count(*), min(timestamp), coalesce(max(id), 0) FROM {TABLE}")
        count, oldest, max_id = cursor.fetchone()
        cursor.execute(
            f"""
            CREATE TABLE {TABLE}_new (
                id bigint NOT NULL,
                event_id varchar(128) NOT NULL,
                quantity numeric(19, 6) NOT NULL
                    CONSTRAINT usage_event_quantity_non_negative CHECK (quantity >= 0),
                "timestamp" timestamptz NOT NULL,
                properties jsonb NOT NULL,
                fingerprint varchar(64) NOT NULL,
                received_at timestamptz NOT NULL,
                api_key_id bigint NULL REFERENCES metering_apikey (id)
                    DEFERRABLE INITIALLY DEFERRED,
                customer_id bigint NOT NULL REFERENCES metering_customer (id)
                    DEFERRABLE INITIALLY DEFERRED,
                meter_id bigint NOT NULL REFERENCES metering_meter (id)
                    DEFERRABLE INITIALLY DEFERRED,
                PRIMARY KEY (id, "timestamp")
            ) PARTITION BY RANGE ("timestamp")
            """
        )
        cursor.execute(f"CREATE TABLE {TABLE}_default PARTITION OF {TABLE}_new DEFAULT")
        now = datetime.now(UTC)
        # from the oldest event (or the oldest month still open to events) to 3 months ahead
        start = _month(min(oldest or now, now - timedelta(days=62)))
        stop = _month(now, 4)
        while start < stop:
            end = _month(start, 1)
            cursor.execute(
                f"CREATE TABLE {TABLE}_p{start:%Y%m} PARTITION OF {TABLE}_new "
                "FOR VALUES FROM (%s) TO (%s)",
                [start, end],
            )
            start = end
        cursor.execute(
            f"INSERT INTO {TABLE}_new ({COLUMNS}) SELECT {COLUMNS} FROM {TABLE}"
        )
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # check the copied FKs before the DDL
        cursor.execute(f"SELECT count(*) FROM {TABLE}_new")
        copied = cursor.fetchone()[0]
        if copied != count:
            raise RuntimeError(f"partitioning copied {copied} of {count} events; rolled back")
        cursor.execute(f"DROP TABLE {TABLE}")
        cursor.execute(f"ALTER TABLE {TABLE}_new RENAME TO {TABLE}")
        cursor.execute(f"CREATE SEQUENCE {TABLE}_id_seq OWNED BY {TABLE}.id")
        cursor.execute(f"SELECT setval('{TABLE}_id_seq', %s, %s)", [max(max_id, 1), max_id > 0])
        cursor.execute(
            f"ALTER TABLE {TABLE} ALTER COLUMN id SET DEFAULT nextval('{TABLE}_id_seq')"
        )
        cursor.execute(f'CREATE INDEX usage_event_cmt ON {TABLE} (customer_id, meter_id, "timestamp")')
        cursor.execute(f"CREATE INDEX usage_event_ce ON {TABLE} (customer_id, event_id)")
        cursor.execute(f"CREATE INDEX {TABLE}_api_key ON {TABLE} (api_key_id)")


class Migration(migrations.Migration):
    atomic = True
    dependencies = [("metering", "0007_event_keys")]
    operations = [migrations.RunPython(partition, migrations.RunPython.noop)]
