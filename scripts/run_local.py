#!/usr/bin/env python3
"""Run the whole service on the embedded default: web app, Celery worker and Celery beat.

    python scripts/run_local.py [--port 8000]

Migrates, seeds the demo (idempotent), then starts the three processes and stops all of them
when one exits or on Ctrl-C. SQLite database and file-system broker under var/: nothing to
install. Safe to run again.
"""

from __future__ import annotations

import argparse
import os
import signal
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
    parser.add_argument("--port", default="8000")
    args = parser.parse_args()

    manage("migrate", "--no-input", "-v", "0")
    manage("seed_demo")

    celery = [PYTHON, "-m", "celery", "-A", "billing_project"]
    commands = {
        "web": [PYTHON, "manage.py", "runserver", f"{args.host}:{args.port}", "--noreload"],
        "worker": [*celery, "worker", "--pool=solo", "--loglevel=INFO"],
        "beat": [*celery, "beat", "--loglevel=INFO"],
    }
    processes = {name: subprocess.Popen(cmd, cwd=ROOT) for name, cmd in commands.items()}
    print(f"\nServing on http://{args.host}:{args.port}/  (admin: /admin/, API docs: /api/docs/)")
    print("Press Ctrl-C to stop.\n", flush=True)

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    # The demo's simulated agent fleet (built on clients/python) starts once the web answers.
    url = f"http://127.0.0.1:{args.port}"
    var = Path(os.environ.get("BILLING_VAR_DIR", ROOT / "var"))
    agent = [PYTHON, "scripts/demo_agent.py", "--url", url, "--key-file", str(var / "demo-api-key")]
    agent += ["--spool", str(var / "demo-agent-spool.sqlite3")]
    try:
        while not stopping:
            if "agent" not in processes and answers(url):
                processes["agent"] = subprocess.Popen(agent, cwd=ROOT)
            for name, proc in processes.items():
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping.", file=sys.stderr)
                    exit_code = proc.returncode or 1
                    stopping = True
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
