"""Every URL pattern of the project, resolved recursively from `billing_project.urls`, with
hostile values for its path parameters, its query parameters and its body.

`url_patterns()` lists each pattern as a path template (`api/v1/customers/%(customer_id)s/usage`)
with its parameter names, the way Django's own `reverse` sees them, and the model admin behind
it, if any. `probes(...)` turns one pattern into the requests a test sends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from django.contrib.admin import ModelAdmin
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils.regex_helper import normalize


@dataclass(frozen=True)
class Pattern:
    template: str  # "portal/invoices/%(invoice_id)s/"
    params: tuple[str, ...]
    name: str
    model_admin: ModelAdmin | None

    @property
    def area(self) -> str:
        for prefix, area in (
            ("api/", "api"),
            ("portal/", "portal"),
            ("admin/", "admin"),
            ("anymail/", "webhooks"),
            ("webhooks/", "webhooks"),
        ):
            if self.template.startswith(prefix):
                return area
        return "other"

    def path(self, values: dict[str, str]) -> str:
        return "/" + self.template % values


def _walk(patterns, prefixes, model_admin=None) -> Iterator[Pattern]:
    for entry in patterns:
        own = normalize(entry.pattern.regex.pattern)
        combined = [(a + b, pa + pb) for a, pa in prefixes for b, pb in own]
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, combined, model_admin)
            continue
        assert isinstance(entry, URLPattern)
        admin = getattr(entry.callback, "model_admin", None) or model_admin
        for template, params in combined:
            yield Pattern(template, tuple(params), entry.name or "", admin)


def url_patterns() -> list[Pattern]:
    """Every pattern, once per distinct template (an optional group gives two templates)."""
    seen: dict[str, Pattern] = {}
    for pattern in _walk(get_resolver().url_patterns, [("", [])]):
        seen.setdefault(pattern.template, pattern)
    return list(seen.values())


# --- Hostile values --------------------------------------------------------------------------

# Path segments, already percent-encoded as a client sends them.
HOSTILE_SEGMENTS = {
    "nul": "%00",
    "nul-suffix": "globex%00",
    "huge-number": "9" * 40,
    "negative": "-1",
    "long": "a" * 3000,
    "unicode": quote("é漢字😀\u202e"),
    "control": "%01%1f%7f",
    "sql": quote("' OR '1'='1"),
}

# Query values (plain text; urlencode encodes them).
HOSTILE_VALUES = {
    "nul": "\x00",
    "nul-suffix": "2026-01-01\x00",
    "max-date": "9999-12-31",
    "min-date": "0001-01-01",
    "year-10000": "10000-01-01",
    "huge-number": "9" * 40,
    "year-9999": "9999",
    "negative-huge": "-" + "9" * 40,
    "overflow-float": "1e999",
    "nan": "NaN",
    "long": "x" * 10_000,
    "unicode": "é漢字😀\u202e\ufeff",
    "empty": "",
    "list": "[1,2]",
    "bad-date": "2026-02-30",
    "datetime": "2026-01-01T25:61:61Z",
}

# Query parameter names the views and the admin read, besides each changelist's own filters.
QUERY_NAMES = [
    "start",
    "end",
    "period",
    "days",
    "property",
    "fragment",
    "page",
    "download",
    "script",
    "format",
    "next",
    "q",
    "o",
    "p",
    "e",
    "all",
    "_changelist_filters",
    "_popup",
    "_to_field",
    "term",
    "app_label",
    "model_name",
    "field_name",
]


def admin_query_names(model_admin: ModelAdmin) -> list[str]:
    """The query parameters a changelist's filters and date hierarchy read."""
    names: list[str] = []
    for spec in model_admin.list_filter:
        field = spec[0] if isinstance(spec, tuple | list) else spec
        if not isinstance(field, str):
            continue
        names += [f"{field}__exact", f"{field}__isnull", f"{field}__gte"]
    if model_admin.date_hierarchy:
        names += [f"{model_admin.date_hierarchy}__{part}" for part in ("year", "month", "day")]
    return names


FORM_FIELD_NAMES = [
    "username",
    "password",
    "email",
    "new_password1",
    "new_password2",
    "old_password",
    "cap",
    "thresholds",
    "action",
    "otp_token",
    "otp_device",
    "start",
    "end",
    "period",
    "reason",
    "name",
]

_JSON_FIELDS = [
    "customer_id",
    "name",
    "emails",
    "currency",
    "timezone",
    "plan",
    "code",
    "interval",
    "prices",
    "cap_minor",
    "thresholds",
    "action",
    "events",
    "event_id",
    "meter",
    "quantity",
    "timestamp",
    "properties",
]

_JSON_VALUES: list[Any] = [
    "\x00",
    "a\x00b",
    "x" * 100_000,
    10**400,
    -(10**30),
    1e308,
    "9999-12-31T23:59:59Z",
    [],
    {},
    [None],
    True,
    "é漢字😀\u202e",
]

HOSTILE_JSON_BODIES: dict[str, bytes] = {
    "array": b"[]",
    "string": b'"x"',
    "null": b"null",
    "number": b"1e999",
    "nan": b'{"cap_minor": NaN}',
    "nul-key": b'{"\\u0000": 1}',
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "truncated": b'{"events": [',
    "not-utf8": b'{"name": "\xff\xfe"}',
    **{
        f"fields-{n}": json.dumps(dict.fromkeys(_JSON_FIELDS, value)).encode()
        for n, value in enumerate(_JSON_VALUES)
    },
}


def hostile_form(names: list[str], value: str) -> bytes:
    return urlencode({name: value for name in names}).encode()


_INPUT_NAME = re.compile(r'<(?:input|select|textarea)[^>]*\bname="([^"]+)"')
_NOT_SENT = {"csrfmiddlewaretoken", "post", "_selected_action", "select_across", "index"}


def form_field_names(html: str) -> list[str]:
    """The names of a page's form fields (what a browser would send back), minus the ones that
    confirm a deletion or select objects for an admin action."""
    return sorted({name for name in _INPUT_NAME.findall(html) if name not in _NOT_SENT})
