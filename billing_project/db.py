"""Database helpers shared by the apps: where PostgreSQL and SQLite differ, in one place.

- `server_binding_cursor()`: PostgreSQL's binary, server-side-bound cursor (ingestion, bulk
  inserts).
- `DecimalSum`, `DecimalMax`: sum and max over decimal columns, exact on both engines (SQLite
  has no decimal arithmetic: its backend, billing_project/sqlite, stores decimals as text and
  registers exact functions these compile to).
- `decimal_add_sql`, `decimal_greatest_sql`: the same for hand-written statements.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from django.db import connection
from django.db.models import Max, Sum


@contextmanager
def server_binding_cursor() -> Iterator[psycopg.Cursor]:
    """A psycopg cursor with server-side binding on Django's connection (PostgreSQL only),
    inside its current transaction. Django's own cursors bind client-side: they quote every
    parameter into the SQL text (`%b` included), which for large arrays costs more than the
    statement; here `%b` arrays travel in PostgreSQL's binary format. Errors surface as
    Django's, as on every query."""
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        yield cursor


class DecimalSum(Sum):
    """SUM over a decimal column, exact on every engine."""

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        # Not Sum's own SQLite form, which casts the result to NUMERIC (a float).
        return self.as_sql(compiler, connection, function="decimal_sum", **extra_context)


class DecimalMax(Max):
    """MAX over a decimal column, compared as numbers on every engine."""

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        return self.as_sql(compiler, connection, function="decimal_max", **extra_context)


def decimal_add_sql(vendor: str, a: str, b: str) -> str:
    """SQL for a + b over decimals."""
    return f"decimal_add({a}, {b})" if vendor == "sqlite" else f"{a} + {b}"


def decimal_greatest_sql(vendor: str, a: str, b: str) -> str:
    """SQL for the larger of two decimals (NULLs ignored)."""
    return f"decimal_greatest({a}, {b})" if vendor == "sqlite" else f"GREATEST({a}, {b})"
