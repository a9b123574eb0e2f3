"""Real processes for end-to-end tests: a Redis server and Celery workers on 127.0.0.1.

Each helper starts a process, waits until it answers, and stops it (SIGTERM, then SIGKILL)
when the fixture ends, so a failing test never leaves a server behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_database_url() -> str:
    """The URL of the test database pytest-django created, for processes outside pytest."""
    s = connection.settings_dict
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    return f"postgres://{s['USER']}{password}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


def stop(process: subprocess.Popen, *, timeout: float = 10) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


@contextmanager
def redis_server(tmp_path: Path) -> Iterator[str]:
    """A throw-away Redis on a free loopback port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        wait_for(answers, timeout=20, what="redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)


def service_env(**extra: str) -> dict[str, str]:
    """The environment of a service process: the test database, test-friendly durations."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=test_database_url(),
        DJANGO_SETTINGS_MODULE="billing_project.settings",
        PYTHONPATH=str(ROOT),
        BILLING_GRACE_PERIOD="0",
        BILLING_REVIEW_PERIOD="0",
        DATABASE_CONN_MAX_AGE="0",
    )
    env.update(extra)
    return env


def start_worker(
    *, broker_url: str, name: str, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """A real Celery worker process (solo pool) consuming from the broker."""
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "billing_project",
        "worker",
        "--pool=solo",
        "--loglevel=INFO",
        "--without-gossip",
        "--without-mingle",
        "-n",
        f"{name}@%h",
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env or service_env(CELERY_BROKER_URL=broker_url),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    wait_for(
        lambda: "ready." in log.read_text() or process.poll() is not None,
        timeout=60,
        what=f"celery worker {name}",
    )
    if process.poll() is not None:
        raise RuntimeError(f"worker {name} exited: {log.read_text()[-2000:]}")
    return process
