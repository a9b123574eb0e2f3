"""The content types of the moved budget models follow them from metering to budgets, so the
Finance group's permissions and the admin's history stay attached.

On an existing database the metering ones are renamed. On a fresh one, a migration that ran
between budgets 0001 and metering 0011 (both apps then had the models in their state) may have
created both: the grants and the history move to the budgets one and the metering one goes.
"""

from django.db import migrations

MODELS = ["budgetcap", "budgetperiodstate", "budgetalert"]


def _move(apps, *, source: str, target: str) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    LogEntry = apps.get_model("admin", "LogEntry")
    for model in MODELS:
        old = ContentType.objects.filter(app_label=source, model=model).first()
        if old is None:
            continue
        new = ContentType.objects.filter(app_label=target, model=model).first()
        if new is None:
            old.app_label = target
            old.save(update_fields=["app_label"])
            continue
        for permission in Permission.objects.filter(content_type=old):
            kept, _ = Permission.objects.get_or_create(
                content_type=new,
                codename=permission.codename,
                defaults={"name": permission.name},
            )
            kept.group_set.add(*permission.group_set.all())
            kept.user_set.add(*permission.user_set.all())
        LogEntry.objects.filter(content_type=old).update(content_type=new)
        old.delete()


def forwards(apps, schema_editor) -> None:
    _move(apps, source="metering", target="budgets")


def backwards(apps, schema_editor) -> None:
    _move(apps, source="budgets", target="metering")


class Migration(migrations.Migration):

    dependencies = [
        ("budgets", "0001_initial"),
        ("metering", "0011_budgets_moved_out"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("admin", "0003_logentry_add_action_flag_choices"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
