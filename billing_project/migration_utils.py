"""Helpers for data migrations (kept stable: migrations import them by path)."""

from __future__ import annotations

from django.contrib.auth.management import create_permissions


def grant_group_permissions(apps, group_name: str, permissions: dict[str, list[str]]) -> None:
    """Give a group (created if missing) the named permissions of each app.

    Permissions are normally created after `migrate`; they are created here first, so the
    grant works on a fresh database too.
    """
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=group_name)
    for app_label, codenames in permissions.items():
        found = Permission.objects.filter(content_type__app_label=app_label, codename__in=codenames)
        missing = set(codenames) - set(found.values_list("codename", flat=True))
        if missing:
            raise RuntimeError(f"unknown permissions for {app_label}: {sorted(missing)}")
        group.permissions.add(*found)
