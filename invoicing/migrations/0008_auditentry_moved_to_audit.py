"""The audit log now lives in the audit app (its migration 0001 took over the table, with its
rows and trigger). Here it leaves invoicing's state, and its content type moves to audit, so
the permissions granted on it (the Finance group's view_auditentry) stay granted."""

from django.db import migrations


def move_content_type(apps, schema_editor, *, source: str, target: str) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    LogEntry = apps.get_model("admin", "LogEntry")
    old = ContentType.objects.filter(app_label=source, model="auditentry").first()
    if old is None:
        return  # nothing was created for it yet: post_migrate creates the target's
    new = ContentType.objects.filter(app_label=target, model="auditentry").first()
    if new is None:
        old.app_label = target
        old.save(update_fields=["app_label"])
        return
    # Both exist (a grant created the target's first): move the grants and the admin's
    # history, drop the old type.
    for permission in Permission.objects.filter(content_type=old):
        kept, _ = Permission.objects.get_or_create(
            content_type=new, codename=permission.codename, defaults={"name": permission.name}
        )
        kept.group_set.add(*permission.group_set.all())
        kept.user_set.add(*permission.user_set.all())
    LogEntry.objects.filter(content_type=old).update(content_type=new)
    old.delete()


def forwards(apps, schema_editor) -> None:
    move_content_type(apps, schema_editor, source="invoicing", target="audit")


def backwards(apps, schema_editor) -> None:
    move_content_type(apps, schema_editor, source="audit", target="invoicing")


class Migration(migrations.Migration):
    dependencies = [
        ("invoicing", "0007_stripe_beat_schedule"),
        ("audit", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("admin", "0003_logentry_add_action_flag_choices"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="AuditEntry")],
            database_operations=[],
        ),
        migrations.RunPython(forwards, backwards),
    ]
