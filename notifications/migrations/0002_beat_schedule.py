"""Schedule the summary and budget tasks every minute in django-celery-beat."""

from django.db import migrations

TASKS = {
    "Send usage summaries of new drafts": "notifications.send_usage_summaries",
    "Check budget caps": "notifications.check_budgets",
}


def forwards(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    every_minute, _ = IntervalSchedule.objects.get_or_create(every=60, period="seconds")
    for name, task in TASKS.items():
        PeriodicTask.objects.get_or_create(
            name=name, defaults={"task": task, "interval": every_minute, "enabled": True}
        )


def backwards(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(task__in=TASKS.values()).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [migrations.RunPython(forwards, backwards)]
