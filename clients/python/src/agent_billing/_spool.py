"""The durable local spool: every event is committed here before record() returns.

SQLite in WAL mode with synchronous=FULL: each commit is fsynced, so a recorded event survives
a process crash *and* an OS crash or power loss. (NORMAL would survive a process crash but may
lose the last commits on power loss; usage is money, so FULL is the default.)

Tables:
- outbox: events not yet confirmed by the service, oldest first (seq). A row is deleted only
  after the service answered `accepted`, `duplicate` or `conflict` for it.
- dead_letters: events the service refused as invalid (422), with its error message. Kept
  until requeued or purged; never sent automatically.
- conflicts: events the service (or the spool) reported as `conflict`: the same event id was
  already used with a different payload. The first payload is the one billed.

One connection per Spool, guarded by a lock, so any number of threads may record at once.
Several processes may share a file (SQLite locking, busy timeout); delivery is serialized
between processes with an advisory lock on `<spool>.lock` (see Client).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("agent_billing")

SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    body TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    UNIQUE (customer_id, event_id)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    customer_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    body TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    status INTEGER,
    error TEXT NOT NULL,
    failed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    body TEXT NOT NULL,
    source TEXT NOT NULL,
    noted_at REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    seq: int
    customer_id: str
    event_id: str
    body: str  # the event's JSON text, exactly as it is sent every time

    @property
    def size(self) -> int:
        return len(self.body.encode("utf-8"))


class Spool:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Usage data is the operator's business: readable by this user only.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._create_schema()

    def _create_schema(self) -> None:
        with self._transaction() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (SCHEMA_VERSION,),
            )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT under the lock (IMMEDIATE: take the write lock first)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # --- meta --------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # --- recording ---------------------------------------------------------------------

    def add(self, events: Iterable[tuple[str, str, str]]) -> list[tuple[str, str | None]]:
        """Spool (customer_id, event_id, body) triples in one transaction.

        Returns per event ("spooled", None), ("duplicate", body) when the same event is
        already waiting, or ("conflict", waiting body) when its id is waiting with another
        payload (the waiting one is kept).
        """
        outcomes: list[tuple[str, str | None]] = []
        now = time.time()
        with self._transaction() as conn:
            for customer_id, event_id, body in events:
                cursor = conn.execute(
                    "INSERT INTO outbox (customer_id, event_id, body, recorded_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (customer_id, event_id) DO NOTHING",
                    (customer_id, event_id, body, now),
                )
                if cursor.rowcount == 1:
                    outcomes.append(("spooled", None))
                    continue
                (waiting,) = conn.execute(
                    "SELECT body FROM outbox WHERE customer_id = ? AND event_id = ?",
                    (customer_id, event_id),
                ).fetchone()
                if waiting == body:
                    outcomes.append(("duplicate", waiting))
                else:
                    conn.execute(
                        "INSERT INTO conflicts (customer_id, event_id, body, source, noted_at) "
                        "VALUES (?, ?, ?, 'local', ?)",
                        (customer_id, event_id, body, now),
                    )
                    outcomes.append(("conflict", waiting))
        return outcomes

    # --- delivery ----------------------------------------------------------------------

    def next_batch(self, *, limit: int, max_bytes: int) -> list[SpooledEvent]:
        """The oldest waiting events: at most `limit`, and at most `max_bytes` of JSON."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, customer_id, event_id, body FROM outbox ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        batch: list[SpooledEvent] = []
        total = 0
        for row in rows:
            event = SpooledEvent(*row)
            if batch and total + event.size + 1 > max_bytes:
                break
            batch.append(event)
            total += event.size + 1
        return batch

    def note_attempt(self, seqs: list[int]) -> None:
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?", [(s,) for s in seqs]
            )

    def settle(
        self,
        *,
        delivered: list[int],
        conflicts: list[SpooledEvent],
        dead: list[tuple[SpooledEvent, int | None, str]],
    ) -> None:
        """Apply the service's answer in one transaction: confirmed events leave the outbox,
        conflicts are noted, refused events move to the dead letters."""
        now = time.time()
        with self._transaction() as conn:
            for event in conflicts:
                conn.execute(
                    "INSERT INTO conflicts (customer_id, event_id, body, source, noted_at) "
                    "VALUES (?, ?, ?, 'server', ?)",
                    (event.customer_id, event.event_id, event.body, now),
                )
            for event, status, error in dead:
                conn.execute(
                    "INSERT OR REPLACE INTO dead_letters (seq, customer_id, event_id, body, "
                    "recorded_at, status, error, failed_at) SELECT seq, customer_id, event_id, "
                    "body, recorded_at, ?, ?, ? FROM outbox WHERE seq = ?",
                    (status, error, now, event.seq),
                )
            gone = delivered + [e.seq for e in conflicts] + [e.seq for e, _, _ in dead]
            conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in gone])

    # --- inspection --------------------------------------------------------------------

    def pending(self, *, upto: int | None = None) -> int:
        with self._lock:
            if upto is None:
                (count,) = self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
            else:
                (count,) = self._conn.execute(
                    "SELECT COUNT(*) FROM outbox WHERE seq <= ?", (upto,)
                ).fetchone()
        return count

    def last_seq(self) -> int:
        with self._lock:
            (seq,) = self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()
        return seq

    def dead_letters(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, customer_id, event_id, body, status, error, failed_at "
                "FROM dead_letters ORDER BY seq"
            ).fetchall()
        return [
            {
                "seq": seq,
                "customer_id": customer,
                "event_id": event_id,
                "event": json.loads(body),
                "status": status,
                "error": error,
                "failed_at": failed_at,
            }
            for seq, customer, event_id, body, status, error, failed_at in rows
        ]

    def requeue_dead_letters(self, seqs: list[int] | None = None) -> int:
        """Move dead letters (all, or those `seqs`) back to the outbox, in their old order."""
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT seq, customer_id, event_id, body, recorded_at FROM dead_letters "
                "ORDER BY seq"
            ).fetchall()
            wanted = None if seqs is None else set(seqs)
            moved = 0
            for seq, customer, event_id, body, recorded_at in rows:
                if wanted is not None and seq not in wanted:
                    continue
                cursor = conn.execute(
                    "INSERT INTO outbox (seq, customer_id, event_id, body, recorded_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (seq, customer, event_id, body, recorded_at),
                )
                if cursor.rowcount == 1:  # else the same id is waiting again: keep the letter
                    moved += 1
                    conn.execute("DELETE FROM dead_letters WHERE seq = ?", (seq,))
        return moved

    def conflicts(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT customer_id, event_id, body, source, noted_at FROM conflicts ORDER BY id"
            ).fetchall()
        return [
            {
                "customer_id": customer,
                "event_id": event_id,
                "event": json.loads(body),
                "source": source,
                "noted_at": noted_at,
            }
            for customer, event_id, body, source, noted_at in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
