"""Fixtures for the client tests: real clients against the live server, a switchable proxy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

CLIENT_SRC = Path(__file__).resolve().parents[2] / "clients" / "python" / "src"
try:
    import agent_billing  # noqa: F401 - installed with `pip install -e clients/python`
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(CLIENT_SRC))

from agent_billing import Client  # noqa: E402

from tests.client.proxy import Proxy  # noqa: E402

# Short waits everywhere: the tests must stay quick and bounded.
FAST = {
    "flush_interval": 0.2,
    "backoff_base": 0.05,
    "max_backoff": 0.5,
    "max_retries": 3,
    "timeout": 10,
    "close_timeout": 5,
}


@pytest.fixture
def spool_path(tmp_path):
    return tmp_path / "spool.sqlite3"


@pytest.fixture
def make_client(live_server, service_key, spool_path):
    """make_client(url=None, *, key=None, spool=None, **options) -> Client, closed afterwards."""
    made: list[Client] = []

    def make(url=None, *, key=None, spool=None, **options):
        client = Client(
            url or live_server.url,
            service_key[1] if key is None else key,
            spool_path=spool or spool_path,
            **{**FAST, **options},
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close(timeout=1)


@pytest.fixture
def proxy(live_server):
    proxy = Proxy(live_server.url).start()
    yield proxy
    proxy.stop()
