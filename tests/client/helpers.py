"""Reading what the service stored and what an agent's spool still holds."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from decimal import Decimal
from pathlib import Path

from metering.models import UsageEvent


def stored() -> dict[str, tuple[str, Decimal]]:
    """Every stored usage event: event id -> (meter code, quantity)."""
    return {
        event_id: (meter, quantity)
        for event_id, meter, quantity in UsageEvent.objects.values_list(
            "event_id", "meter__code", "quantity"
        )
    }


def spooled(path: Path) -> int:
    """Events waiting in a spool file, read directly (as a restarted agent would find them)."""
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
