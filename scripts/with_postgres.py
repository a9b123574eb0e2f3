#!/usr/bin/env python3
"""Run a command against a throw-away PostgreSQL server, started and stopped here.

    python scripts/with_postgres.py [--durable] -- COMMAND [ARGS...]
    python scripts/with_postgres.py --check

If DATABASE_URL is already set, the command runs against that server and nothing is started.
Otherwise a cluster is created in a temporary directory (initdb), started on a free loopback
port with its socket in that directory, DATABASE_URL is exported for the command, and the
cluster is stopped and removed afterwards, whatever the command's outcome. As root, the server
runs as the `postgres` user (PostgreSQL refuses to run as root). By default durability is
relaxed (fsync off) since test data is disposable; `--durable` keeps PostgreSQL's defaults, for
benchmarks. `--check` only says whether a server could be started (exit status 2 and the
install command if not). Standard library only, so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found.\n"
    "On Debian/Ubuntu: apt-get install -y postgresql   (or set DATABASE_URL to a server)"
)


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--durable", action="store_true", help="keep fsync on (benchmarks)")
    parser.add_argument("--keep", action="store_true", help="do not delete the data directory")
    parser.add_argument(
        "--check", action="store_true", help="only check that a server can be had, then exit"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command and not args.check:
        parser.error("give a command after --")

    if os.environ.get("DATABASE_URL"):
        return 0 if args.check else subprocess.call(command)

    initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
    if not initdb or not pg_ctl:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    if args.check:
        return 0

    base = tempfile.mkdtemp(prefix="billing-pg-")
    data = os.path.join(base, "data")
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
    port = free_port()
    settings = [
        "-c listen_addresses=127.0.0.1",
        f"-c unix_socket_directories={base}",
        f"-p {port}",
        "-c max_connections=200",
        "-c shared_buffers=256MB",
    ]
    if not args.durable:
        settings += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
    log = os.path.join(base, "server.log")
    started = False
    try:
        subprocess.run(
            as_server_user(
                [
                    initdb,
                    "-D",
                    data,
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--locale=C",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            as_server_user(
                [pg_ctl, "-D", data, "-l", log, "-o", " ".join(settings), "-w", "-t", "60", "start"]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        started = True
        env = dict(os.environ, DATABASE_URL=f"postgres://postgres@127.0.0.1:{port}/postgres")
        env["BILLING_TEST_PG_DATA"] = data
        env["BILLING_TEST_PG_CTL"] = pg_ctl
        print(f"PostgreSQL started on 127.0.0.1:{port} ({data})", file=sys.stderr)
        child = subprocess.Popen(command, env=env)
        try:
            return child.wait()
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)
            return child.wait()
    except subprocess.CalledProcessError as exc:
        print(f"could not start PostgreSQL: {exc}", file=sys.stderr)
        if os.path.exists(log):
            print(open(log).read()[-4000:], file=sys.stderr)
        return 2
    finally:
        if started:
            subprocess.run(
                as_server_user([pg_ctl, "-D", data, "-m", "fast", "-w", "stop"]),
                stdout=subprocess.DEVNULL,
                check=False,
            )
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
