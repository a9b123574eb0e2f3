"""The budget models move from metering to budgets: the state only, the tables stay where they
are (db_table keeps their names; no data is copied). Their content types follow in 0002."""

import django.db.models.deletion
from django.db import migrations, models

import budgets.models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("metering", "0010_alerts_per_cap"),
        # the Finance group got its budget permissions while the models were in metering
        ("notifications", "0003_finance_permissions"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name="BudgetAlert",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("period_start", models.DateTimeField()),
                        ("threshold", models.PositiveSmallIntegerField(help_text="percent of the cap")),
                        ("cap_minor", models.BigIntegerField()),
                        ("spent_minor", models.BigIntegerField()),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("customer", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="budget_alerts", to="metering.customer")),
                    ],
                    options={
                        "db_table": "metering_budgetalert",
                        "ordering": ["-created_at"],
                        "constraints": [models.UniqueConstraint(fields=("customer", "period_start", "cap_minor", "threshold"), name="budget_alert_once_per_cap")],
                    },
                ),
                migrations.CreateModel(
                    name="BudgetCap",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("cap_minor", models.BigIntegerField(blank=True, help_text="Empty: no cap.", null=True)),
                        ("thresholds", models.JSONField(default=budgets.models.default_thresholds)),
                        ("action", models.CharField(choices=[("alert", "Alert only"), ("pause", "Pause agents at the cap")], default="alert", max_length=8)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                        ("customer", models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name="budget", to="metering.customer")),
                    ],
                    options={
                        "db_table": "metering_budgetcap",
                        "constraints": [models.CheckConstraint(condition=models.Q(("cap_minor__isnull", True), ("cap_minor__gt", 0), _connector="OR"), name="budget_cap_positive")],
                    },
                ),
                migrations.CreateModel(
                    name="BudgetPeriodState",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("period_start", models.DateTimeField()),
                        ("period_end", models.DateTimeField()),
                        ("status", models.CharField(choices=[("active", "Active"), ("warning", "Warning"), ("paused", "Paused")], default="active", max_length=8)),
                        ("spent_minor", models.BigIntegerField(default=0)),
                        ("cap_minor", models.BigIntegerField(blank=True, null=True)),
                        ("acknowledged_at", models.DateTimeField(blank=True, null=True)),
                        ("acknowledged_by", models.CharField(blank=True, max_length=150)),
                        ("paused_at", models.DateTimeField(blank=True, null=True)),
                        ("pause_count", models.PositiveIntegerField(default=0)),
                        ("resume_count", models.PositiveIntegerField(default=0)),
                        ("checked_at", models.DateTimeField(blank=True, null=True)),
                        ("customer", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="budget_states", to="metering.customer")),
                    ],
                    options={
                        "db_table": "metering_budgetperiodstate",
                        "constraints": [models.UniqueConstraint(fields=("customer", "period_start"), name="budget_state_one_per_period")],
                    },
                ),
            ],
        ),
    ]
