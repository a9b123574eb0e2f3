"""Writing many new rows of one model in one INSERT, the values sent as binary arrays.

On PostgreSQL, Django's `bulk_create` builds a model instance per row, prepares every value
field by field, and quotes it into the SQL text (its cursors bind parameters client-side),
which the server then parses back. For the tens of thousands of rows a period close writes,
that was half of the close. `insert_rows` takes the rows column by column, already in the
form the database stores (ints, str, Decimal, aware datetimes, JSON-able values), and sends
one binary array parameter per column (`INSERT ... SELECT * FROM unnest(...)`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from django.db import connection
from django.db.models import Field, JSONField, Model
from django.utils import timezone
from psycopg.types.json import Jsonb

from billing_project.db import server_binding_cursor


def insert_rows(
    model: type[Model],
    columns: Mapping[str, Sequence[Any]],
    *,
    ignore_conflicts: bool = False,
    match_on: Sequence[str] = (),
) -> list[int]:
    """INSERT rows of `model` given column-wise (field name -> one value per row) and return
    their new primary keys in row order (none with `ignore_conflicts`, which skips the rows
    that violate a unique constraint).

    With `match_on` (given columns whose values together differ from row to row), each key
    is matched to its row by those values, read back with it; without, by position (an
    INSERT ... SELECT from unnest returns its rows in array order, as bulk_create assumes).

    The values are stored as given: no field conversion or validation happens, so give
    foreign keys as ids and datetimes aware. A field left out takes its default (`auto_now`
    and `auto_now_add` fields: now; text fields: ""; else NULL). Elsewhere than PostgreSQL
    it is `bulk_create`.
    """
    opts = model._meta
    rows = len(next(iter(columns.values()), ()))
    if any(len(values) != rows for values in columns.values()):
        raise ValueError("every column needs one value per row")
    if not set(match_on) <= set(columns):
        raise ValueError("match_on names given columns")
    keys = list(zip(*(columns[name] for name in match_on), strict=True)) if match_on else []
    if len(set(keys)) != len(keys):
        raise ValueError(f"the match_on columns {', '.join(match_on)} repeat a value")
    if not rows:
        return []
    fields = [f for f in opts.concrete_fields if f is not opts.pk]
    unknown = set(columns) - {f.name for f in fields} - {f.attname for f in fields}
    if unknown:
        raise ValueError(f"{opts.label} has no field {', '.join(sorted(unknown))}")
    now = timezone.now()
    arrays: list[Sequence[Any]] = []
    for field in fields:
        values = columns.get(field.attname, columns.get(field.name))
        if values is None:
            values = [_default(field, now)] * rows
        arrays.append(values)
    if connection.vendor != "postgresql":
        objs = model._default_manager.bulk_create(
            [
                model(**{f.attname: a[i] for f, a in zip(fields, arrays, strict=True)})
                for i in range(rows)
            ],
            ignore_conflicts=ignore_conflicts,
        )
        return [] if ignore_conflicts else [obj.pk for obj in objs]  # objs in row order
    params = [
        _json_values(field, values) if isinstance(field, JSONField) else values
        for field, values in zip(fields, arrays, strict=True)
    ]
    quote = connection.ops.quote_name
    by_name = {f.name: f for f in fields} | {f.attname: f for f in fields}
    returning = [quote(_column(opts.pk)), *(quote(_column(by_name[name])) for name in match_on)]
    sql = (
        f"INSERT INTO {quote(opts.db_table)} ({', '.join(quote(_column(f)) for f in fields)}) "  # noqa: S608 - names from the model
        f"SELECT * FROM unnest({', '.join(f'%b::{f.db_type(connection)}[]' for f in fields)})"
        + (" ON CONFLICT DO NOTHING" if ignore_conflicts else f" RETURNING {', '.join(returning)}")
    )
    with server_binding_cursor() as cursor:
        cursor.execute(sql, params)
        if ignore_conflicts:
            return []
        returned = cursor.fetchall()
    if len(returned) != rows:
        raise RuntimeError(f"inserted {len(returned)} rows of {rows}")
    if not match_on:
        return [pk for pk, *_ in returned]
    pk_by_key = {tuple(key): pk for pk, *key in returned}
    return [pk_by_key[key] for key in keys]


def _column(field: Field[Any, Any]) -> str:
    """A concrete field's column (only fields without one, like many-to-many, have None)."""
    assert field.column is not None
    return field.column


def _default(field: Any, now: Any) -> Any:
    if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
        return now
    return field.get_default()  # as a new instance would have it: "" for text, else NULL


def _json_values(field: JSONField, values: Sequence[Any]) -> list[Jsonb | None]:
    dumps = partial(json.dumps, cls=field.encoder) if field.encoder else json.dumps
    return [None if value is None else Jsonb(value, dumps=dumps) for value in values]
