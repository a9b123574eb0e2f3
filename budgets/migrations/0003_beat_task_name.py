"""The budget check task moved with the budgets: the beat schedule follows its new name."""

from django.db import migrations

OLD, NEW = "notifications.check_budgets", "budgets.check_budgets"


def _rename(apps, *, source: str, target: str) -> None:
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(task=source).update(task=target)


def forwards(apps, schema_editor) -> None:
    _rename(apps, source=OLD, target=NEW)


def backwards(apps, schema_editor) -> None:
    _rename(apps, source=NEW, target=OLD)


class Migration(migrations.Migration):

    dependencies = [
        ("budgets", "0002_content_types"),
        ("notifications", "0002_beat_schedule"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
