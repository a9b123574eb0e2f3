"""Every URL pattern of the project with hostile path values, query values and bodies, as each
kind of caller (no credentials, an API key, a portal login, a finance login): no answer is a
5xx, and no table gains or loses a row.

The patterns come from the resolver itself (`urlwalk.url_patterns`), so a new URL is walked
without being listed here. Logins are excluded from the row counts only where a failed login
is recorded by design (django-axes' attempt tables).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import DatabaseError, transaction
from django.test import Client

from metering.models import Customer
from tests.security.hostile import urlwalk
from tests.security.hostile.world import World, build_world, changed_tables, table_counts

pytestmark = pytest.mark.django_db

# Failed logins are recorded by django-axes, and a change form the admin accepts (a model whose
# fields are all read-only takes any body) by the admin's log and the audit log: that is their
# job. Nothing else may change: every business table keeps its row count.
RECORDED_BY_DESIGN = frozenset(
    {
        "axes_accessattempt",
        "axes_accessfailurelog",
        "axes_accesslog",
        "django_admin_log",
        "invoicing_auditentry",
    }
)
AREAS = ["api", "portal", "admin", "webhooks", "other"]
ROLE = {"api": "key", "portal": "portal", "admin": "staff", "webhooks": "anonymous"}


@dataclass(frozen=True)
class Probe:
    role: str
    method: str
    path: str
    query: str = ""
    body: bytes = b""
    content_type: str = "application/octet-stream"

    def __str__(self) -> str:
        query = f"?{self.query[:80]}" if self.query else ""
        body = f" body={self.body[:60]!r}" if self.body else ""
        return f"{self.role} {self.method} {self.path[:120]}{query}{body}"


def valid_values(pattern: urlwalk.Pattern, world: World) -> dict[str, str]:
    values = {}
    for name in pattern.params:
        if name == "customer_id":
            values[name] = "acme"
        elif name == "object_id" and pattern.model_admin is not None:
            first = pattern.model_admin.model._default_manager.order_by("pk").first()
            values[name] = str(first.pk) if first else "1"
        elif name == "object_id":  # the admin's view-on-site shortcut
            values[name] = str(world.acme.customer.pk)
        elif name == "content_type_id":
            values[name] = str(ContentType.objects.get_for_model(Customer).pk)
        elif name in {"id", "pk"}:
            values[name] = str(world.staff.pk)
        elif name == "invoice_id":
            values[name] = str(world.invoice.pk)
        elif name == "app_label":
            values[name] = "metering"
        elif name == "url":
            values[name] = "nothing/here/"
        elif name == "uidb64":
            values[name] = "MQ"
        elif name == "token":
            values[name] = "set-password"
        else:
            values[name] = "x"
    return values


def role_for(pattern: urlwalk.Pattern) -> str:
    return ROLE.get(pattern.area, "staff")


def _form(names: list[str], key: str) -> bytes:
    return urlwalk.hostile_form(names, urlwalk.HOSTILE_VALUES[key])


# A few of each kind where a pattern merely could read them; every value where it does.
FEW_SEGMENTS = ("nul", "huge-number", "unicode", "long")
FEW_VALUES = ("nul", "empty", "huge-number")
FORM_VALUES = ("nul", "long", "huge-number")


def probes(pattern: urlwalk.Pattern, world: World) -> Iterator[Probe]:
    """The requests for one pattern, as the caller its area expects and as nobody."""
    role = role_for(pattern)
    valid = valid_values(pattern, world)
    path = pattern.path(valid)
    form = "application/x-www-form-urlencoded"
    is_changelist = pattern.name.endswith("_changelist")
    reads_query = pattern.area in {"api", "portal", "other"} or is_changelist
    # Path parameters: hostile values in each parameter, the others valid.
    segments = urlwalk.HOSTILE_SEGMENTS if pattern.area != "admin" else FEW_SEGMENTS
    for name in pattern.params:
        for key in segments:
            hostile = pattern.path({**valid, name: urlwalk.HOSTILE_SEGMENTS[key]})
            yield Probe(role, "GET", hostile)
        hostile = pattern.path({**valid, name: urlwalk.HOSTILE_SEGMENTS["nul-suffix"]})
        yield Probe("anonymous", "GET", hostile)
        yield Probe(role, "POST", hostile, body=_form(["name"], "nul"), content_type=form)
    if not pattern.name:
        return  # the admin's redirect from <id>/ to <id>/change/: only its path is read
    # Query parameters: every name the project reads at once, then one at a time where the
    # view reads them (the API, the portal, the admin's changelists).
    names = list(urlwalk.QUERY_NAMES)
    if pattern.model_admin is not None:
        names += urlwalk.admin_query_names(pattern.model_admin)
    for key in urlwalk.HOSTILE_VALUES if reads_query else FEW_VALUES:
        yield Probe(role, "GET", path, query=_form(names, key).decode())
    if pattern.area in {"api", "portal"}:
        for name in ("start", "end", "period", "days", "property", "page"):
            for key in ("max-date", "year-10000", "huge-number", "bad-date"):
                yield Probe(role, "GET", path, query=_form([name], key).decode())
    if is_changelist:
        for name in urlwalk.admin_query_names(pattern.model_admin):
            for key in ("huge-number", "max-date"):
                yield Probe(role, "GET", path, query=_form([name], key).decode())
        hierarchy = pattern.model_admin.date_hierarchy
        if hierarchy:
            last_day = f"{hierarchy}__year=9999&{hierarchy}__month=12&{hierarchy}__day=31"
            yield Probe(role, "GET", path, query=last_day)
    # Bodies: forms with every field the page shows (and the usual ones), JSON of every shape.
    yield Probe("anonymous", "GET", path)
    if pattern.name.endswith("_delete"):
        return  # any POST there confirms the deletion (a finance action, CSRF-protected)
    yield Probe(
        "anonymous", "POST", path, body=_form(urlwalk.FORM_FIELD_NAMES, "long"), content_type=form
    )
    fields = list(urlwalk.FORM_FIELD_NAMES)
    page = world.clients[role].get(path)
    if page.status_code == 200 and "html" in page.get("Content-Type", ""):
        fields += urlwalk.form_field_names(page.content.decode(errors="replace"))
    for key in FORM_VALUES:
        yield Probe(role, "POST", path, body=_form(fields, key), content_type=form)
    if pattern.area in {"api", "webhooks"}:
        for method in ("POST", "PUT"):
            for body in urlwalk.HOSTILE_JSON_BODIES.values():
                yield Probe(role, method, path, body=body, content_type="application/json")
        for method in ("PATCH", "DELETE"):
            for name in ("array", "nul-key", "fields-0"):
                body = urlwalk.HOSTILE_JSON_BODIES[name]
                yield Probe(role, method, path, body=body, content_type="application/json")
    else:
        body = urlwalk.HOSTILE_JSON_BODIES["fields-0"]
        yield Probe(role, "POST", path, body=body, content_type="application/json")


def send(client: Client, probe: Probe):
    url = f"{probe.path}?{probe.query}" if probe.query else probe.path
    return client.generic(probe.method, url, data=probe.body, content_type=probe.content_type)


@pytest.mark.parametrize("area", AREAS)
def test_no_url_answers_5xx_or_changes_data_on_hostile_input(area, settings):
    world = build_world(raise_request_exception=False)
    settings.AXES_ENABLED = True  # as in production: failed logins are recorded
    patterns = [p for p in urlwalk.url_patterns() if p.area == area]
    assert patterns
    # Pages that materialise the current period or budget state on first view do it now.
    for pattern in patterns:
        world.clients[role_for(pattern)].get(pattern.path(valid_values(pattern, world)))

    failures, sent = [], 0
    logging.getLogger("django.request").setLevel(logging.CRITICAL)  # the 5xx are listed below
    for pattern in patterns:
        if pattern.name == "logout":
            continue  # walked anonymously below: a signed-in walk would end its own session
        for probe in probes(pattern, world):
            # Each probe in a savepoint, rolled back: a failure cannot poison the next probe's
            # transaction, and what one probe wrote cannot hide another's write.
            with transaction.atomic():
                before = table_counts(exclude=RECORDED_BY_DESIGN)
                response = send(world.clients[probe.role], probe)
                try:
                    changed = changed_tables(before, table_counts(exclude=RECORDED_BY_DESIGN))
                except DatabaseError:  # the request left the transaction aborted
                    changed = {"(transaction aborted)": (0, 0)}
                transaction.set_rollback(True)
            sent += 1
            if response.status_code >= 500 or changed:
                error = response.exc_info[1] if response.exc_info else None
                failures.append(
                    (pattern.template, response.status_code, str(probe), changed, error)
                )
    for pattern in patterns:
        if pattern.name == "logout":
            for method in ("GET", "POST"):
                response = world.clients["anonymous"].generic(method, pattern.path({}))
                sent += 1
                if response.status_code >= 500:
                    error = response.exc_info[1] if response.exc_info else None
                    failures.append((pattern.template, response.status_code, method, {}, error))

    logging.getLogger("django.request").setLevel(logging.NOTSET)
    print(f"{area}: {len(patterns)} patterns, {sent} requests, {len(failures)} failures")
    assert failures == [], report(failures)


def report(failures: list[tuple]) -> str:
    """One line per pattern and kind of failure, with a count and the first request."""
    groups: dict[tuple, list[str]] = {}
    for template, status, probe, changed, error in failures:
        kind = (template, status, type(error).__name__, str(error)[:100], str(sorted(changed)))
        groups.setdefault(kind, []).append(probe)
    lines = [f"{len(failures)} failing requests in {len(groups)} groups:"]
    for (template, status, name, message, changed), examples in groups.items():
        lines.append(f"{len(examples):4} x {status} {template} {name}: {message} {changed}")
        lines.append(f"         e.g. {examples[0][:200]}")
    return "\n".join(lines)
