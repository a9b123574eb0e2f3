#!/usr/bin/env python3
"""Run the whole service on the embedded default: web app, Celery worker and Celery beat.

    python scripts/run_local.py [--port 8000]      (make run [PORT=8000])

Refuses at once, in one line, when the port is taken (nothing else is started, so the demo
agent never posts to another server). Then migrates, seeds the demo (idempotent), starts the
three processes and the demo agent fleet, prints the logins and the agent key last, in a box,
and stops all of them when one exits or on Ctrl-C. Logs show warnings and errors only
(LOG_LEVEL=INFO shows every request and task). SQLite database and file-system broker under
var/: nothing to install. Safe to run again.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def manage(*args: str) -> None:
    subprocess.run([PYTHON, str(ROOT / "manage.py"), *args], check=True, cwd=ROOT)


def port_in_use(host: str, port: int) -> str | None:
    """Why (host, port) cannot be served on, or None when it is free. SO_REUSEADDR as the
    server sets it, so a port left in TIME_WAIT by the last run counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def seed_demo() -> list[str]:
    """seed_demo's report (logins and key), kept for the box printed once all is running."""
    result = subprocess.run(
        [PYTHON, str(ROOT / "manage.py"), "seed_demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"manage.py seed_demo failed with exit status {result.returncode}")
    return result.stdout.splitlines()


def box(lines: list[str]) -> str:
    width = max(len(line) for line in lines)
    rule = "+" + "-" * (width + 2) + "+"
    return "\n".join([rule, *(f"| {line.ljust(width)} |" for line in lines), rule])


def answers(url: str) -> bool:
    """Whether the web server answers at all (an error status counts)."""
    try:
        urllib.request.urlopen(url + "/healthz", timeout=2).close()  # noqa: S310 - our URL
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description="run web + worker + beat locally")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if not 0 < args.port < 65536:
        parser.error(f"--port must be 1-65535, got {args.port}")
    problem = port_in_use(args.host, args.port)
    if problem:
        print(
            f"Cannot serve on {args.host}:{args.port}: {problem} (another server is there). "
            f"Stop it, or choose a free port: make run PORT={args.port + 1}",
            file=sys.stderr,
        )
        return 1

    manage("migrate", "--no-input", "-v", "0")
    report = seed_demo()

    # Warnings and errors only, unless LOG_LEVEL says otherwise: the agent fleet's requests
    # and beat's minute ticks would scroll everything else away.
    url = f"http://{args.host}:{args.port}"
    env = dict(os.environ)
    log_level = env.setdefault("LOG_LEVEL", "WARNING")
    env.setdefault("PORTAL_BASE_URL", url)  # the links in the demo's e-mails
    celery = [PYTHON, "-m", "celery", "-A", "billing_project", "--quiet"]
    commands = {
        "web": [PYTHON, "manage.py", "runserver", f"{args.host}:{args.port}", "--noreload"],
        "worker": [*celery, "worker", "--pool=solo", f"--loglevel={log_level}"],
        "beat": [*celery, "beat", f"--loglevel={log_level}"],
    }
    processes = {name: subprocess.Popen(cmd, cwd=ROOT, env=env) for name, cmd in commands.items()}
    key_file = Path(os.environ.get("BILLING_VAR_DIR", ROOT / "var")) / "demo-api-key"
    summary = [
        f"Serving on {url}/  (admin: /admin/, API docs: /api/docs/)",
        "",
        *(line.strip() for line in report[:-1]),
        report[-1],
        f"(kept in {key_file})",
        "",
        "Press Ctrl-C to stop.",
    ]

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    # The demo's simulated agent fleet (built on clients/python) starts once our web process
    # answers; the box comes a few seconds later, after the start-up lines of everything.
    var = key_file.parent
    agent = [PYTHON, "scripts/demo_agent.py", "--url", url, "--key-file", str(key_file)]
    agent += ["--spool", str(var / "demo-agent-spool.sqlite3")]
    box_at: float | None = None
    try:
        while not stopping:
            for name, proc in processes.items():
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping.", file=sys.stderr)
                    exit_code = proc.returncode or 1
                    stopping = True
            if stopping:
                break
            if "agent" not in processes and answers(url):
                processes["agent"] = subprocess.Popen(agent, cwd=ROOT, env=env)
                box_at = time.monotonic() + 3
            if box_at is not None and time.monotonic() >= box_at:
                print("\n" + box(summary) + "\n", flush=True)
                box_at = None
            time.sleep(0.5)
    finally:
        for proc in processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
    return exit_code


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_project.settings")
    sys.exit(main())
