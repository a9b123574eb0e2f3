"""The append-only audit log: every period close, invoice transition and finance action."""

from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from invoicing.models import AuditEntry

SYSTEM = "system"


def build_audit_entry(
    *,
    action: str,
    obj: models.Model,
    user: Any = None,
    customer_external_id: str = "",
    data: dict[str, Any] | None = None,
) -> AuditEntry:
    """An unsaved entry (for writing many at once with bulk_create); `user` is a Django user
    or None for the system (beat, worker, API)."""
    return AuditEntry(
        action=action,
        actor_id=getattr(user, "pk", None),
        actor=getattr(user, "username", None) or SYSTEM,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk),
        customer_external_id=customer_external_id,
        data=json.loads(json.dumps(data or {}, cls=DjangoJSONEncoder)),
    )


def record_audit(
    *,
    action: str,
    obj: models.Model,
    user: Any = None,
    customer_external_id: str = "",
    data: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry now."""
    entry = build_audit_entry(
        action=action, obj=obj, user=user, customer_external_id=customer_external_id, data=data
    )
    entry.save()
    return entry
