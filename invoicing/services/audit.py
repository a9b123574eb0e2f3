"""The append-only audit log: every period close, invoice transition and finance action."""

from __future__ import annotations

import json
from collections.abc import Sequence
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
    """An unsaved entry; `user` is a Django user or None for the system (beat, worker, API)."""
    return AuditEntry(
        action=action,
        actor_id=getattr(user, "pk", None),
        actor=getattr(user, "username", None) or SYSTEM,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk),
        customer_external_id=customer_external_id,
        data=json.loads(json.dumps(data or {}, cls=DjangoJSONEncoder)),
    )


# One system entry for system_entry_columns: (action, model class, object id, customer
# external id, data already in JSON form, as build_audit_entry would store it).
SystemEntry = tuple[str, type[models.Model], int, str, dict[str, Any]]


def system_entry_columns(entries: Sequence[SystemEntry]) -> dict[str, list[Any]]:
    """Entries of system actions column-wise, as build_audit_entry fills them, for
    invoicing.bulk.insert_rows: a close writes tens of thousands, without a model instance
    (or a JSON round trip) per entry."""
    return {
        "action": [action for action, _, _, _, _ in entries],
        "actor_id": [None] * len(entries),
        "actor": [SYSTEM] * len(entries),
        "object_type": [model._meta.label_lower for _, model, _, _, _ in entries],
        "object_id": [str(pk) for _, _, pk, _, _ in entries],
        "customer_external_id": [external_id for _, _, _, external_id, _ in entries],
        "data": [data for _, _, _, _, data in entries],
    }


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
