"""The budget models now live in the budgets app (its 0001 takes them over): metering forgets
them in its state only; the tables stay."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("metering", "0010_alerts_per_cap"),
        ("budgets", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.RemoveField(model_name="budgetcap", name="customer"),
                migrations.RemoveField(model_name="budgetperiodstate", name="customer"),
                migrations.DeleteModel(name="BudgetAlert"),
                migrations.DeleteModel(name="BudgetCap"),
                migrations.DeleteModel(name="BudgetPeriodState"),
            ],
        ),
    ]
