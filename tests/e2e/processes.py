"""Real processes for end-to-end tests, all on 127.0.0.1: Redis (throw-away, or restartable with
its append-only file), Celery workers and beat, gunicorn, an SMTP server capturing mail, the fake
Stripe, and control of the test PostgreSQL server (restart, sessions left by killed processes).

Each helper starts a process, waits until it answers, and stops it (SIGTERM, then SIGKILL)
when the fixture ends, so a failing test never leaves a server behind.
"""

from __future__ import annotations

import logging
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


# --- A restartable Redis -------------------------------------------------------------------


class RedisServer:
    """A Redis on a fixed loopback port and data directory that can be stopped and started
    again: with `persistent`, the append-only file (fsync always) keeps its queues across a
    restart; without, a restart empties it, as a Redis without persistence would be."""

    def __init__(self, data_dir: Path, *, persistent: bool = True) -> None:
        self.data_dir = data_dir
        self.persistent = persistent
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.data_dir),
            ],
            stdout=(self.data_dir / "redis.log").open("a"),
            stderr=subprocess.STDOUT,
        )
        wait_for(self.answers, timeout=20, what="redis-server")
        return self

    def stop(self) -> None:
        """SIGTERM: Redis writes what it holds to the append-only file and exits."""
        if self.process is not None:
            stop(self.process)
        wait_for(lambda: not self.answers(), timeout=10, what="redis-server to stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def queue_length(self, queue: str = "celery") -> int:
        import redis

        return int(redis.Redis(port=self.port, socket_timeout=2).llen(queue))


@contextmanager
def restartable_redis(tmp_path: Path, *, persistent: bool = True) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", persistent=persistent).start()
    try:
        yield server
    finally:
        if server.process is not None:
            stop(server.process)


# --- Web and beat ----------------------------------------------------------------------------


def start_gunicorn(
    *, env: dict[str, str], log: Path, workers: int = 2
) -> tuple[subprocess.Popen, str]:
    """gunicorn serving the app on a free loopback port; returns (process, base URL) once
    /healthz answers 200 (database and broker reachable)."""
    import requests

    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "billing_project.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            str(workers),
            "--timeout",
            "60",
            "--graceful-timeout",
            "5",
            "--access-logfile",
            "-",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            return True
        try:
            return requests.get(f"{url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_for(healthy, timeout=60, what="gunicorn /healthz")
    if process.poll() is not None:
        raise RuntimeError(f"gunicorn exited: {log.read_text()[-2000:]}")
    return process, url


BEAT_TASKS = {
    "e2e: run the billing cycle": "billing_cycle.run_billing_cycle",
    "e2e: send usage summaries": "notifications.send_usage_summaries",
    "e2e: check budget caps": "budgets.check_budgets",
}


def schedule_beat(*, every: int) -> None:
    """Put the beat schedule in the test database, every `every` seconds.

    The migrations create these rows at 60 s intervals, but a transactional test's flush
    empties the tables, and the tests cannot wait minutes: the schedule is written here."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

    PeriodicTask.objects.all().delete()
    interval, _ = IntervalSchedule.objects.get_or_create(every=every, period="seconds")
    for name, task in BEAT_TASKS.items():
        PeriodicTask.objects.create(name=name, task=task, interval=interval, enabled=True)
    PeriodicTasks.update_changed()


def start_beat(*, env: dict[str, str], log: Path, schedule: Path) -> subprocess.Popen:
    """Celery beat with the database scheduler (django-celery-beat) reading schedule_beat()."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "billing_project",
            "beat",
            "--scheduler",
            "django_celery_beat.schedulers:DatabaseScheduler",
            "-s",
            str(schedule),
            "--loglevel=INFO",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    wait_for(
        lambda: "beat: Starting" in log.read_text() or process.poll() is not None,
        timeout=60,
        what="celery beat",
    )
    if process.poll() is not None:
        raise RuntimeError(f"beat exited: {log.read_text()[-2000:]}")
    return process


def kill(process: subprocess.Popen) -> None:
    """SIGKILL, as the OOM killer or a lost machine would: no cleanup, no acknowledgement."""
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def manage(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """`python manage.py ARGS` as a separate process, its output captured."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --- Mail and Stripe ------------------------------------------------------------------------


class MailCapture:
    """The messages an in-process SMTP server (aiosmtpd) received, parsed."""

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.messages: list = []  # email.message.EmailMessage
        self.port = free_port()

    async def handle_DATA(self, server, session, envelope) -> str:
        from email import message_from_bytes, policy

        message = message_from_bytes(envelope.content, policy=policy.default)
        with self.lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"

    def snapshot(self) -> list:
        with self.lock:
            return list(self.messages)


@contextmanager
def smtp_capture() -> Iterator[MailCapture]:
    """An SMTP server on 127.0.0.1 keeping every message it receives."""
    from aiosmtpd.controller import Controller

    logging.getLogger("mail.log").setLevel(logging.WARNING)  # one INFO line per SMTP command
    capture = MailCapture()
    controller = Controller(capture, hostname="127.0.0.1", port=capture.port)
    controller.start()
    try:
        yield capture
    finally:
        controller.stop()


@contextmanager
def fake_stripe_running() -> Iterator:
    """The fake Stripe (tests/fake_stripe.py) on a free loopback port, in a thread here."""
    from tests.fake_stripe import FakeStripe

    fake = FakeStripe().start()
    # The fleet's customers have a card on file; the story test turns this off for its
    # customer without one (tests/e2e/test_stripe_story.py).
    fake.cards_for_new_customers = True
    try:
        yield fake
    finally:
        fake.stop()


# --- PostgreSQL -----------------------------------------------------------------------------


def restart_postgres() -> None:
    """Restart the test server (`pg_ctl restart -m fast`): every connection is cut.

    scripts/with_postgres.py exports where the cluster lives; the server keeps the options it
    was started with (postmaster.opts). The caller's own connection is closed too."""
    data, pg_ctl = os.environ.get("BILLING_TEST_PG_DATA"), os.environ.get("BILLING_TEST_PG_CTL")
    if not data or not pg_ctl:
        raise RuntimeError("run under scripts/with_postgres.py to restart PostgreSQL")
    command = [pg_ctl, "-D", data, "-l", str(Path(data).parent / "server.log"), "-w", "-t", "60"]
    command += ["restart", "-m", "fast"]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    connection.close()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=90)


def can_restart_postgres() -> bool:
    return bool(os.environ.get("BILLING_TEST_PG_DATA") and os.environ.get("BILLING_TEST_PG_CTL"))


def other_backends() -> list[tuple[int, str, str]]:
    """(pid, wait event, query) of the other sessions on the test database."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, coalesce(wait_event, ''), query FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return list(cursor.fetchall())


def terminate_other_backends() -> None:
    """End every other session on the test database (left by a killed process)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
