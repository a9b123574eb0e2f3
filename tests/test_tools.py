"""A run that needs a program this machine lacks refuses before any test, saying how to install
it (tests/tools.py): never a silent skip. Checked with PATH cut down to a directory without it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import tools

ROOT = Path(__file__).resolve().parents[1]
RATE_LIMIT_REDIS_TEST = (
    "tests/security/test_rate_limit.py::"
    "test_two_servers_share_one_count_in_redis_and_fail_open_without_it"
)
REDIS_REFUSAL = [
    "  redis-server: the end-to-end tests' broker and the shared rate-limit cache",
    "Install them: sudo apt-get install -y --no-install-recommends redis-server",
    "(or run `CI=true bash .ci/run`, which installs what the suite needs, then runs it)",
]


def run_without_redis(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Python with a PATH that holds nothing else (so no redis-server)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env["PATH"] = str(bin_dir)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_suite_check_names_the_missing_program_and_its_install_command(tmp_path):
    result = run_without_redis(tmp_path, "-m", "tests.tools")

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "Refusing to run: the test suite needs programs this machine lacks:",
        *REDIS_REFUSAL,
    ]


def test_a_run_selecting_a_test_that_needs_a_missing_program_refuses_before_any_test(tmp_path):
    result = run_without_redis(
        tmp_path, "-m", "pytest", "-p", "no:cacheprovider", "-q", RATE_LIMIT_REDIS_TEST
    )

    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "Refusing to run: 1 selected test(s) need programs this machine lacks:" in output
    for line in REDIS_REFUSAL:
        assert line in output
    assert "passed" not in output and "skipped" not in output


def test_a_run_that_needs_no_missing_program_is_not_refused(tmp_path):
    result = run_without_redis(
        tmp_path, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--collect-only", __file__
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Refusing" not in result.stdout + result.stderr


def test_a_test_deselected_by_keyword_needs_nothing(tmp_path):
    result = run_without_redis(
        tmp_path,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "--collect-only",
        "tests/security/test_rate_limit.py",
        "-k",
        "not redis",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Refusing" not in result.stdout + result.stderr
    assert "test_two_servers_share_one_count_in_the_embedded_file_cache" in result.stdout


def test_a_program_at_a_fixed_path_is_missing_when_that_path_is(tmp_path, monkeypatch):
    absent = tools.Program("chromium", "the browser tests", tmp_path / "chromium")
    monkeypatch.setitem(tools.PROGRAMS, "chromium", absent)

    assert tools.missing(["chromium"]) == ["chromium"]
    (tmp_path / "chromium").touch()
    assert tools.missing(["chromium"]) == []


def test_the_postgres_check_needs_no_server_binaries_with_a_database_url(tmp_path):
    env = {"PATH": str(tmp_path), "DATABASE_URL": "postgres://nobody@127.0.0.1:9/none"}
    check = subprocess.run(
        [sys.executable, "scripts/with_postgres.py", "--check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
