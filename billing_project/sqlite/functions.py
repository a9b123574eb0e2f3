"""Exact decimal arithmetic for SQLite, registered on every connection (see base.py).

SQLite has no decimal type: its arithmetic, sum() and max() work on 64-bit floats (15
significant digits), and over text they convert to floats first or compare as text. The
project stores decimals as text on SQLite and does the arithmetic it needs in SQL through
these functions, in Python's `Decimal` with enough precision for any stored value:

- `decimal_sum(x)`, `decimal_max(x)`: aggregates, like sum() and max(), NULLs ignored;
- `decimal_add(a, b)`: a + b (NULL if either is NULL, as `+`);
- `decimal_greatest(a, b)`: the larger, NULLs ignored (PostgreSQL's GREATEST).

Results are fixed-point text (no exponent), which the backend's converters read back exactly.
Values stored by a database created before decimals were text (REAL or INTEGER in a NUMERIC
column, 15 significant digits) are read as the decimal they print as.
"""

from __future__ import annotations

import decimal
from decimal import Decimal
from typing import Any

# Wide enough for any sum of stored values: 28-digit totals, 12-place unit prices.
EXACT = decimal.Context(prec=80, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.InvalidOperation])


def to_decimal(value: Any) -> Decimal | None:
    """A stored value as a Decimal: text exactly, integers exactly, a legacy float as the
    shortest decimal that round-trips (what it was written as, to 15 digits)."""
    if value is None:
        return None
    if isinstance(value, str):
        return EXACT.create_decimal(value)
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return EXACT.create_decimal(repr(value))
    if isinstance(value, Decimal):
        return value
    raise TypeError(f"not a decimal value: {type(value).__name__}")


def to_text(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


class DecimalSum:
    """sum(x) over decimals, exactly."""

    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: Any) -> None:
        number = to_decimal(value)
        if number is not None:
            self.total = number if self.total is None else EXACT.add(self.total, number)

    def finalize(self) -> str | None:
        return to_text(self.total)


class DecimalMax:
    """max(x) over decimals, compared as numbers (text would compare '9' > '10')."""

    def __init__(self) -> None:
        self.top: Decimal | None = None

    def step(self, value: Any) -> None:
        number = to_decimal(value)
        if number is not None and (self.top is None or number > self.top):
            self.top = number

    def finalize(self) -> str | None:
        return to_text(self.top)


def decimal_add(a: Any, b: Any) -> str | None:
    left, right = to_decimal(a), to_decimal(b)
    if left is None or right is None:
        return None
    return to_text(EXACT.add(left, right))


def decimal_greatest(a: Any, b: Any) -> str | None:
    numbers = [n for n in (to_decimal(a), to_decimal(b)) if n is not None]
    return to_text(max(numbers)) if numbers else None


def register(connection: Any) -> None:
    """Register the functions on a sqlite3 connection."""
    connection.create_aggregate("decimal_sum", 1, DecimalSum)
    connection.create_aggregate("decimal_max", 1, DecimalMax)
    connection.create_function("decimal_add", 2, decimal_add, deterministic=True)
    connection.create_function("decimal_greatest", 2, decimal_greatest, deterministic=True)
