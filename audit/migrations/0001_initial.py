"""The audit log moves here from invoicing, keeping its table (invoicing_auditentry), rows and
append-only trigger (invoicing migration 0002): only Django's state changes. invoicing's
0008 removes the model from its own state and moves the model's content type, with the
permissions granted on it, to this app."""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    # The table was created by invoicing's migrations; it is taken over after all of them.
    dependencies = [("invoicing", "0007_stripe_beat_schedule")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="AuditEntry",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("at", models.DateTimeField(auto_now_add=True, db_index=True)),
                        ("action", models.CharField(db_index=True, max_length=64)),
                        ("actor_id", models.BigIntegerField(blank=True, null=True)),
                        ("actor", models.CharField(help_text="user name, or 'system'", max_length=150)),
                        ("object_type", models.CharField(max_length=64)),
                        ("object_id", models.CharField(max_length=64)),
                        ("customer_external_id", models.CharField(blank=True, db_index=True, max_length=128)),
                        ("data", models.JSONField(default=dict)),
                    ],
                    options={
                        "db_table": "invoicing_auditentry",
                        "verbose_name_plural": "audit entries",
                        "ordering": ["-at", "-id"],
                        "indexes": [models.Index(fields=["object_type", "object_id"], name="audit_object")],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
