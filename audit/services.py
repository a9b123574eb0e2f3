"""Appending to the audit log: every period close, invoice transition and finance action.

`record_audit` appends one entry now; `build_audit_entry` makes one for a caller that saves
many at once; `system_entry_columns` gives system entries column-wise for the bulk INSERT of
a period close. `tracking_user_entries` tells the admin which entries the services it called
appended with a user, so an admin action is audited once (see audit.audited_admin).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from audit.models import AuditEntry

SYSTEM = "system"

# The entries appended with a user inside the innermost `tracking_user_entries` block.
_user_entries: ContextVar[list[AuditEntry] | None] = ContextVar("audit_user_entries", default=None)


def build_audit_entry(
    *,
    action: str,
    obj: models.Model,
    user: Any = None,
    actor_label: str = "",
    customer_external_id: str = "",
    data: dict[str, Any] | None = None,
) -> AuditEntry:
    """An unsaved entry; `user` is a Django user, else `actor_label` names who acted (an API
    key: "api key <prefix>"), else it is the system (beat, worker)."""
    return AuditEntry(
        action=action,
        actor_id=getattr(user, "pk", None),
        actor=(getattr(user, "username", None) or actor_label or SYSTEM)[:150],
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
    actor_label: str = "",
    customer_external_id: str = "",
    data: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry now."""
    entry = build_audit_entry(
        action=action,
        obj=obj,
        user=user,
        actor_label=actor_label,
        customer_external_id=customer_external_id,
        data=data,
    )
    entry.save()
    _track([entry])
    return entry


def record_audit_entries(entries: Sequence[AuditEntry]) -> list[AuditEntry]:
    """Append entries made by build_audit_entry, in one INSERT."""
    saved = AuditEntry.objects.bulk_create(entries)
    _track(saved)
    return saved


@contextmanager
def tracking_user_entries() -> Iterator[list[AuditEntry]]:
    """Collect the entries appended with a user (not by the system) inside the block, in this
    thread or task; an enclosing block sees them too."""
    outer = _user_entries.get()
    collected: list[AuditEntry] = []
    token = _user_entries.set(collected)
    try:
        yield collected
    finally:
        _user_entries.reset(token)
        if outer is not None:
            outer.extend(collected)


def _track(entries: Sequence[AuditEntry]) -> None:
    collected = _user_entries.get()
    if collected is not None:
        collected.extend(entry for entry in entries if entry.actor_id is not None)
