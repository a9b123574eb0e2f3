"""Create the Finance group with the permissions finance staff need in the admin."""

from django.db import migrations

from billing_project.migration_utils import grant_group_permissions

FINANCE_PERMISSIONS = {
    "metering": [
        "view_customer", "add_customer", "change_customer",
        "view_meter", "add_meter", "change_meter",
        "view_apikey", "add_apikey", "change_apikey",
        "view_usageevent",
        "view_portalmembership", "add_portalmembership", "change_portalmembership",
        "delete_portalmembership",
    ],
}


def create_finance_group(apps, schema_editor) -> None:
    grant_group_permissions(apps, "Finance", FINANCE_PERMISSIONS)


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_finance_group, migrations.RunPython.noop)]
