"""Schedule the Stripe tasks in django-celery-beat (editable in the admin).

Both are enabled: each task reads its setting at run time and does nothing when it is off
(STRIPE_USAGE_REPORTING=realtime for the reporting, BILLING_BACKEND=stripe or reporting on
for the resume), so changing the environment never needs a schedule edit.
"""

from django.db import migrations

TASKS = [
    ("Report usage to Stripe (realtime)", "invoicing.stripe_report_usage", 300),
    ("Resume pending Stripe syncs", "invoicing.stripe_resume_sync", 600),
]


def forwards(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    for name, task, seconds in TASKS:
        every, _ = IntervalSchedule.objects.get_or_create(every=seconds, period="seconds")
        PeriodicTask.objects.get_or_create(
            name=name, defaults={"task": task, "interval": every, "enabled": True}
        )


def backwards(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(task__in=[task for _, task, _ in TASKS]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("invoicing", "0006_stripe_sync"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [migrations.RunPython(forwards, backwards)]
