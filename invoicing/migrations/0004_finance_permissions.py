"""Give the Finance group the invoicing permissions (the audit log is view-only)."""

from django.db import migrations

from billing_project.migration_utils import grant_group_permissions

FINANCE_PERMISSIONS = {
    "invoicing": [
        "view_priceplan", "add_priceplan", "change_priceplan",
        "view_price", "add_price", "change_price", "delete_price",
        "view_pricetier", "add_pricetier", "change_pricetier", "delete_pricetier",
        "view_subscription", "add_subscription", "change_subscription",
        "view_billingperiod", "change_billingperiod",
        "view_invoice", "change_invoice",
        "view_invoiceline",
        "view_auditentry",
    ],
    "metering": ["view_usageaggregate"],
    "django_celery_beat": ["view_periodictask", "change_periodictask"],
}


def grant(apps, schema_editor) -> None:
    grant_group_permissions(apps, "Finance", FINANCE_PERMISSIONS)


class Migration(migrations.Migration):
    dependencies = [
        ("invoicing", "0003_beat_schedule"),
        ("metering", "0003_usage_aggregates"),
    ]
    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
