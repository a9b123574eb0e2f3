"""`make run` (scripts/run_local.py): a taken port is refused in one line before anything starts;
otherwise the service, worker, beat and demo agent run, the logins come last in a box, and
Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "scripts" / "run_local.py")


def local_env(tmp_path: Path) -> dict[str, str]:
    """The embedded default in a directory of the test's own (no server of the test run)."""
    drop = {"DATABASE_URL", "CACHE_URL", "REDIS_URL", "CELERY_BROKER_URL", "BILLING_ENV"}
    env = {name: value for name, value in os.environ.items() if name not in drop}
    env.update(BILLING_VAR_DIR=str(tmp_path / "var"), PYTHONUNBUFFERED="1")
    env.pop("LOG_LEVEL", None)
    env.pop("PORTAL_BASE_URL", None)
    return env


def test_a_taken_port_is_refused_in_one_line_before_anything_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, SCRIPT, "--port", str(port)],
            cwd=ROOT,
            env=local_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"Cannot serve on 127.0.0.1:{port}: Address already in use (another server is there). "
        f"Stop it, or choose a free port: make run PORT={port + 1}\n"
    )
    assert not (tmp_path / "var").exists()  # not even migrated: nothing was started


@pytest.mark.parametrize("port", ["0", "65536"])
def test_a_port_out_of_range_is_refused(tmp_path, port):
    result = subprocess.run(
        [sys.executable, SCRIPT, "--port", port],
        cwd=ROOT,
        env=local_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith(f"--port must be 1-65535, got {port}")
    assert not (tmp_path / "var").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        return response.status, response.headers["Content-Type"]


@pytest.mark.slow
def test_the_service_runs_prints_the_logins_last_in_a_box_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, SCRIPT, "--port", str(port)],
        cwd=ROOT,
        env=local_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the test's Ctrl-C reaches all of it
    )
    lines: list[str] = []
    boxed = threading.Event()

    def read() -> None:
        rules = 0
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("+---"):
                rules += 1
                if rules == 2:
                    boxed.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert boxed.wait(timeout=300), "\n".join(lines[-40:])
        top = next(i for i, line in enumerate(lines) if line.startswith("+---"))
        bottom = lines.index(lines[top], top + 1)
        box = [line.strip("|").strip() for line in lines[top + 1 : bottom]]
        before = lines[:top]
        key = (tmp_path / "var" / "demo-api-key").read_text().strip()
        health = get(f"{url}/healthz")
        icon = get(f"{url}/favicon.ico")
    finally:
        os.killpg(process.pid, signal.SIGINT)
        code = process.wait(timeout=60)
    reader.join(timeout=10)
    time.sleep(1)

    assert box == [
        f"Serving on {url}/  (admin: /admin/, API docs: /api/docs/)",
        "",
        "Demo data ready.",
        "acme on plan demo-hourly v1 (hour, USD)",
        "globex on plan pro-eur v1 (month, EUR)",
        "initech on plan pro-usd v1 (month, USD)",
        "Finance staff (admin): finance / demo-password-1",
        "Customer portal login: acme / demo-password-1",
        "Customer portal login: globex / demo-password-1",
        "Customer portal login: initech / demo-password-1",
        "Agent API key (service-wide):",
        key,
        f"(kept in {tmp_path / 'var' / 'demo-api-key'})",
        "",
        "Press Ctrl-C to stop.",
    ]
    assert any(line.startswith("Starting development server at") for line in before)
    assert not any("Demo data ready" in line for line in before)  # no login scrolls away
    assert health == (200, "application/json")
    assert icon == (200, "image/x-icon")
    assert code == 0
    with pytest.raises(ProcessLookupError):  # no process of the group is left
        os.killpg(process.pid, 0)
