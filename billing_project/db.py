"""Database helpers shared by the apps."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from django.db import connection


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
