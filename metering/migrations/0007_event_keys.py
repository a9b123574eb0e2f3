"""Deduplication moves to its own table (UsageEventKey), filled from the existing events,
so that the events table can be partitioned by time (next migration)."""

import django.db.models.deletion
from django.db import migrations, models


def copy_keys(apps, schema_editor):
    schema_editor.execute(
        "INSERT INTO metering_usageeventkey (customer_id, event_id, fingerprint) "
        "SELECT customer_id, event_id, fingerprint FROM metering_usageevent",
        params=None,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0006_immutable_events_watermarks"),
    ]

    operations = [
        migrations.CreateModel(
            name="UsageEventKey",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False,
                                           verbose_name="ID")),
                ("event_id", models.CharField(max_length=128)),
                ("fingerprint", models.CharField(max_length=64)),
                ("customer", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT,
                                               related_name="+", to="metering.customer")),
            ],
        ),
        migrations.AddConstraint(
            model_name="usageeventkey",
            constraint=models.UniqueConstraint(
                fields=("customer", "event_id"), name="usage_event_key_unique"
            ),
        ),
        migrations.RunPython(copy_keys, migrations.RunPython.noop),
        migrations.RemoveConstraint(
            model_name="usageevent",
            name="usage_event_unique_per_customer",
        ),
        migrations.AddIndex(
            model_name="usageevent",
            index=models.Index(fields=["customer", "event_id"], name="usage_event_ce"),
        ),
    ]
