"""Finance staff see notifications and webhooks, and may resend (change) a notification."""

from django.db import migrations

from billing_project.migration_utils import grant_group_permissions

FINANCE_PERMISSIONS = {
    "notifications": ["view_notification", "change_notification", "view_operatorwebhook"],
    "metering": [
        "view_budgetcap", "add_budgetcap", "change_budgetcap", "view_budgetperiodstate",
        "view_budgetalert",
    ],
}


def grant(apps, schema_editor) -> None:
    grant_group_permissions(apps, "Finance", FINANCE_PERMISSIONS)


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0002_beat_schedule"),
        ("metering", "0004_budget_caps"),
    ]
    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
