"""The billing cycle runs every minute in beat: the schedule invoicing 0003 created for the
close task now runs the cycle's task (the same row, so an edited interval is kept)."""

from django.db import migrations
from django.utils import timezone

OLD = "invoicing.close_due_periods"
NEW = "billing_cycle.run_billing_cycle"


def _retask(apps, old, new):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    if PeriodicTask.objects.filter(task=old).update(task=new):
        # what beat watches to reload its schedule (the model's signals do not run here)
        PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})
    return PeriodicTask


def forwards(apps, schema_editor):
    PeriodicTask = _retask(apps, OLD, NEW)
    if not PeriodicTask.objects.filter(task=NEW).exists():
        IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
        every_minute, _ = IntervalSchedule.objects.get_or_create(every=60, period="seconds")
        PeriodicTask.objects.get_or_create(
            name="Run the billing cycle",
            defaults={"task": NEW, "interval": every_minute, "enabled": True},
        )


def backwards(apps, schema_editor):
    _retask(apps, NEW, OLD)


class Migration(migrations.Migration):
    dependencies = [
        ("invoicing", "0003_beat_schedule"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [migrations.RunPython(forwards, backwards)]
