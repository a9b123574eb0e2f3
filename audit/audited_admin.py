"""Every admin action in the audit log, with its user, its object and what changed.

The back office's admin site (billing_project/admin_site.py) puts AuditedModelAdmin under
every ModelAdmin registered on it, ours and the third-party ones (users, groups, beat
schedules, OTP devices, login attempts), so no admin page can forget it:

- add and change (the change form, list_editable): `admin.<model>_added` / `_changed`, with
  Django's change message (it names the inline rows added, changed and deleted) and each
  edited field's value before and after, for the row and its inline rows;
- delete (the delete page and "delete selected"): `admin.<model>_deleted`, with the row's
  values, written in the deletion's transaction before the row goes;
- any other action: `admin.<model>_<action>` per selected row, see `_audited_action`.

An admin action is audited once: when the services a save or an action calls append entries
with the user themselves (`subscription.created`, `invoice.finalized`, ...), the admin adds
none. Values of fields named like secrets (passwords, keys, tokens, hashes, secrets) are never
written, only that they changed: an API key's secret is not even on the model (only its hash,
which is masked too).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, cast

from django.contrib import admin, messages
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, router, transaction
from django.db.models import QuerySet
from django.forms import BaseForm
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from audit.models import AuditEntry
from audit.services import build_audit_entry, record_audit_entries, tracking_user_entries

HIDDEN = "(hidden)"
# password, password1, key, key_hash, otp_token, webhook_secret, idempotency_key, ...
_SECRET_NAME = re.compile(r"(?:^|_)(?:password\d?|secret|token|key|hash)$")
_FORM_CHANGES = "_audit_form_changes"  # request attribute: construct_change_message -> log_*
_FORMSET_FIELDS = {"DELETE", "ORDER"}

# Entries appended with the user during the change form being saved (see changeform_view).
_saved_by_services: ContextVar[list[AuditEntry] | None] = ContextVar(
    "audit_saved_by_services", default=None
)
# Levels of the messages an action showed, while it runs (see message_user).
_action_messages: ContextVar[list[int] | None] = ContextVar("audit_action_messages", default=None)

Action = Callable[[admin.ModelAdmin, HttpRequest, QuerySet], HttpResponse | None]
# An action as wrapped here: only AuditedModelAdmin's get_actions hands it out.
AuditedAction = Callable[["AuditedModelAdmin", HttpRequest, QuerySet], HttpResponse | None]


def is_secret_field(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def _plain(value: Any) -> Any:
    """A value as the audit log stores it: rows by primary key, anything JSON cannot hold as
    text (DjangoJSONEncoder takes decimals, datetimes and UUIDs as they are)."""
    if isinstance(value, models.Model):
        return value.pk
    if isinstance(value, QuerySet | list | tuple | set | frozenset):
        items = [_plain(item) for item in value]
        unordered = isinstance(value, QuerySet | set | frozenset) or all(
            isinstance(item, models.Model) for item in value
        )  # a many-to-many field's rows, in no particular order
        return _sorted(items) if unordered else items
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, bytes | memoryview):
        return HIDDEN
    try:
        json.dumps(value, cls=DjangoJSONEncoder)
    except (TypeError, ValueError):
        return str(value)
    return value


def _sorted(items: list[Any]) -> list[Any]:
    try:
        return sorted(items)
    except TypeError:
        return sorted(items, key=str)


def _change(name: str, before: Any, after: Any) -> dict[str, Any]:
    if is_secret_field(name):
        return {"from": HIDDEN, "to": HIDDEN}
    return {"from": _plain(before), "to": _plain(after)}


def _row_values(obj: models.Model) -> dict[str, Any]:
    return {field.attname: field.value_from_object(obj) for field in obj._meta.concrete_fields}


def _row_changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: _change(name, value, after.get(name))
        for name, value in before.items()
        if value != after.get(name)
    }


def _shown_values(values: dict[str, Any]) -> dict[str, Any]:
    return {name: HIDDEN if is_secret_field(name) else _plain(v) for name, v in values.items()}


def _form_changes(form: BaseForm) -> dict[str, dict[str, Any]]:
    """Each field the form changed: its value before (what the form showed: the row's value,
    or the field's initial value on an add form) and after. A field the form counts as changed
    whose value is the same (e.g. JSON text written differently) is left out."""
    changes = {}
    for name in form.changed_data:
        if name in _FORMSET_FIELDS or name not in form.fields:
            continue
        before, after = form[name].initial, form.cleaned_data.get(name)
        if _plain(before) != _plain(after):
            changes[name] = _change(name, before, after)
    return changes


def _inline_changes(formsets: Iterable[Any]) -> list[dict[str, Any]]:
    rows = []
    for formset in formsets:
        deleted = set(map(id, getattr(formset, "deleted_forms", [])))
        for form in formset.forms:
            if id(form) in deleted or not form.has_changed():
                continue
            instance = form.instance
            rows.append(
                {
                    "object_type": instance._meta.label_lower,
                    "object_id": str(instance.pk),
                    "object": str(instance),
                    "fields": _form_changes(form),
                }
            )
    return rows


@contextmanager
def _collect(var: ContextVar[list[int] | None]) -> Iterator[list[int]]:
    collected: list[int] = []
    token = var.set(collected)
    try:
        yield collected
    finally:
        var.reset(token)


class AuditedModelAdmin(admin.ModelAdmin):
    """Appends every add, change, delete and action made through this admin to the audit log
    (see the module's docstring). Applied to every registered admin by the admin site."""

    def audit_customer_external_id(self, obj: models.Model) -> str:
        """The customer a row is, or belongs to (a `customer` foreign key), for the log's
        customer column; "" for rows of no customer."""
        names = {field.name for field in obj._meta.concrete_fields}
        if "customer" in names:
            return getattr(getattr(obj, "customer", None), "external_id", "") or ""
        if "external_id" in names:
            return str(getattr(obj, "external_id", "") or "")
        return ""

    def _entry(self, request: HttpRequest, obj: Any, verb: str, data: dict) -> AuditEntry:
        return build_audit_entry(
            action=f"admin.{obj._meta.model_name}_{verb}"[:64],
            obj=obj,
            user=request.user,
            customer_external_id=self.audit_customer_external_id(obj),
            data={"object": str(obj), **data},
        )

    # --- add, change, delete ------------------------------------------------------------------

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        with tracking_user_entries() as entries:
            token = _saved_by_services.set(entries)
            try:
                return super().changeform_view(request, object_id, form_url, extra_context)
            finally:
                _saved_by_services.reset(token)

    def construct_change_message(
        self, request: HttpRequest, form: Any, formsets: Any, add: bool = False
    ) -> Any:
        message = super().construct_change_message(request, form, formsets, add)
        changes: dict[str, Any] = {"fields": _form_changes(form)}
        inlines = _inline_changes(formsets or [])
        if inlines:
            changes["inlines"] = inlines
        setattr(request, _FORM_CHANGES, changes)
        return message

    def _audit_save(self, request: HttpRequest, obj: Any, verb: str, message: Any) -> None:
        changes = request.__dict__.pop(_FORM_CHANGES, {})
        if _saved_by_services.get():
            return  # the services that the save called audited it with the user
        record_audit_entries([self._entry(request, obj, verb, {"changes": message, **changes})])

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        self._audit_save(request, obj, "added", message)
        return super().log_addition(request, obj, message)

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        self._audit_save(request, obj, "changed", message)
        return super().log_change(request, obj, message)

    def log_deletions(self, request: HttpRequest, queryset: Any) -> Any:
        record_audit_entries(
            [
                self._entry(
                    request,
                    obj,
                    "deleted",
                    {"changes": [], "fields": _shown_values(_row_values(obj))},
                )
                for obj in queryset
            ]
        )
        return super().log_deletions(request, queryset)

    # --- actions ------------------------------------------------------------------------------

    def message_user(
        self,
        request: HttpRequest,
        message: Any,
        level: int | str = messages.INFO,
        extra_tags: str = "",
        fail_silently: bool = False,
    ) -> None:
        shown = _action_messages.get()
        if shown is not None:
            shown.append(level if isinstance(level, int) else getattr(messages, level.upper()))
        super().message_user(request, message, level, extra_tags, fail_silently)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions: dict[str, Any] = {}
        for name, action in super().get_actions(request).items():
            if action is None:  # the stubs allow one; Django 5.2 gives none
                actions[name] = None
                continue
            # The stubs type an action as returning str; it returns a response or None.
            func, _, description = cast(tuple[Action, str, str], action)
            run = _atomic(func) if name == "delete_selected" else _audited_action(func, name)
            actions[name] = (run, name, description)
        return actions


def _atomic(func: Action) -> Action:
    """Runs "delete selected" in one transaction: its log_deletions entries and the deletion
    commit together."""

    @functools.wraps(func)
    def run(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> Any:
        with transaction.atomic(using=router.db_for_write(modeladmin.model)):
            return func(modeladmin, request, queryset)

    return run


def _audited_action(func: Action, name: str) -> AuditedAction:
    """An action that appends its own entries with the user (through the services it calls)
    is audited by them. Otherwise each selected row it changed gets an entry with the fields'
    values before and after (or that it went). An action that changed none of its rows acted
    elsewhere (queued a task, sent a message): each selected row gets an entry with no field
    changes, unless the action is not done yet (it answered with a page: a confirmation or a
    form) or refused (it showed only warnings or errors), since then nothing happened."""

    @functools.wraps(func)
    def run(modeladmin: AuditedModelAdmin, request: HttpRequest, queryset: QuerySet) -> Any:
        selected = list(queryset.order_by("pk"))
        before = {obj.pk: _row_values(obj) for obj in selected}
        with tracking_user_entries() as entries, _collect(_action_messages) as shown:
            try:
                response = func(modeladmin, request, queryset)
            except Exception:
                if not entries:  # what it changed before it failed
                    record_audit_entries(_changed_rows(modeladmin, request, name, before, selected))
                raise
        if entries:
            return response
        changed = _changed_rows(modeladmin, request, name, before, selected)
        if changed:
            record_audit_entries(changed)
            return response
        pending = isinstance(response, TemplateResponse)
        refused = bool(shown) and min(shown) >= messages.WARNING
        if not (pending or refused):
            record_audit_entries(
                [modeladmin._entry(request, obj, name, {"fields": {}}) for obj in selected]
            )
        return response

    return run


def _changed_rows(
    modeladmin: AuditedModelAdmin,
    request: HttpRequest,
    name: str,
    before: dict[Any, dict[str, Any]],
    selected: list[models.Model],
) -> list[AuditEntry]:
    """An entry for each selected row that the action changed (its fields before and after)
    or that went."""
    after = {obj.pk: obj for obj in modeladmin.model._base_manager.filter(pk__in=list(before))}
    entries = []
    for obj in selected:
        now = after.get(obj.pk)
        if now is None:
            entries.append(modeladmin._entry(request, obj, name, {"deleted": True}))
            continue
        fields = _row_changes(before[obj.pk], _row_values(now))
        if fields:
            entries.append(modeladmin._entry(request, now, name, {"fields": fields}))
    return entries
