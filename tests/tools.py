"""The programs outside Python that some tests start, and the one check that they are there.

A test (or a module, through `pytestmark`) declares what it starts with
`@pytest.mark.needs("redis-server")`. When a selected test needs a program this machine lacks,
the run refuses before any test runs (tests/conftest.py), with the command that installs it:
a missing program is never a silent skip. `python -m tests.tools` checks every program the
whole suite needs, standard library only, so `make test` refuses before installing anything.
PostgreSQL is scripts/with_postgres.py's business (`--check`).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")  # Debian's Chromium; Playwright never downloads a browser


@dataclass(frozen=True)
class Program:
    package: str  # the Debian/Ubuntu package that installs it
    purpose: str
    at: Path | None = None  # the one path it must have; None: anywhere on PATH

    def path(self, name: str) -> str | None:
        if self.at is not None:
            return str(self.at) if self.at.exists() else None
        return shutil.which(name)


PROGRAMS = {
    "redis-server": Program(
        "redis-server", "the end-to-end tests' broker and the shared rate-limit cache"
    ),
    "chromium": Program("chromium", "the browser tests (tests/portal/test_browser.py)", CHROMIUM),
}


def missing(names: Iterable[str]) -> list[str]:
    """The programs among `names` that this machine lacks, sorted."""
    return sorted({name for name in names if PROGRAMS[name].path(name) is None})


def refusal(absent: list[str], tests: int | None = None) -> str:
    """What to tell someone whose run needs the `absent` programs."""
    needing = f"{tests} selected test(s) need" if tests is not None else "the test suite needs"
    lines = [f"Refusing to run: {needing} programs this machine lacks:"]
    lines += [f"  {name}: {PROGRAMS[name].purpose}" for name in absent]
    packages = " ".join(PROGRAMS[name].package for name in absent)
    lines += [
        f"Install them: sudo apt-get install -y --no-install-recommends {packages}",
        "(or run `CI=true bash .ci/run`, which installs what the suite needs, then runs it)",
    ]
    return "\n".join(lines)


def main() -> int:
    absent = missing(PROGRAMS)
    if absent:
        print(refusal(absent), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
