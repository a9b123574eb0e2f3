"""Create the Finance group with the permissions finance staff need in the admin."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

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


def _ensure_permissions(apps) -> None:
    # Permissions are normally created after migrate; create them now so the group can use them.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None


def create_finance_group(apps, schema_editor) -> None:
    _ensure_permissions(apps)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name="Finance")
    for app_label, codenames in FINANCE_PERMISSIONS.items():
        perms = Permission.objects.filter(
            content_type__app_label=app_label, codename__in=codenames
        )
        group.permissions.add(*perms)


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_finance_group, migrations.RunPython.noop)]
