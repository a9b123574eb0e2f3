"""Cells of the portal's CSV export that a spreadsheet cannot run as a formula.

Spreadsheets evaluate a cell that begins with `=`, `+`, `-` or `@` (and, in some, one that
begins with a tab or a carriage return) as a formula, which can fetch URLs or run commands when
the file is opened. OWASP's advice for CSV injection is to prefix such a cell with a single
quote, which spreadsheets show as text. Here:

- a cell that begins with one of those characters, or with a single quote, gets one single
  quote in front (the quote itself is included so the rule can be undone: a cell that begins
  with `'` had exactly one `'` added, and removing it gives the raw value);
- a cell that is a plain decimal number (`-12`, `+3.5`) is left as it is: no spreadsheet runs
  it, and it stays a number. The export's quantities are never negative, so this only spares
  event ids that look like numbers.
"""

from __future__ import annotations

import re

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "'")
_PLAIN_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")


def spreadsheet_safe(cell: str) -> str:
    if not cell.startswith(FORMULA_TRIGGERS) or _PLAIN_NUMBER.fullmatch(cell):
        return cell
    return "'" + cell
