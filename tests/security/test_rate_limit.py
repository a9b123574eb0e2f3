"""Per-key API rate limits: 429 with `Retry-After` and the API's error body, counted per key id
and scope in the shared cache (so across processes), and never an outage when the cache is down.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
import requests
import time_machine
from django.core.cache import cache
from django.utils import timezone
from rest_framework.test import APIClient

from metering import services
from metering.models import UsageEvent
from tests.e2e.processes import ROOT, free_port, redis_server, service_env, stop, wait_for
from tests.metering.helpers import EVENTS_URL, iso, make_event

pytestmark = pytest.mark.django_db

# 15 s into a minute: a one-minute window has 45 s left.
T = (timezone.now() - timedelta(hours=1)).replace(second=15, microsecond=0)
WINDOW = int(T.timestamp() // 60)
LIMITS = {"events": (3, 60), "reads": (2, 60), "writes": (2, 60)}


@pytest.fixture
def limits(settings):
    settings.BILLING_RATE_LIMITS = dict(LIMITS)
    return settings.BILLING_RATE_LIMITS


def client_for(plaintext: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client


def post_event(client: APIClient, n: int):
    event = make_event(event_id=f"evt-{n}", timestamp=iso(T - timedelta(minutes=5)))
    return client.post(EVENTS_URL, event, format="json")


def refused_body(seconds: int) -> dict:
    message = f"rate limit exceeded for this API key: retry in {seconds} seconds"
    return {"errors": [{"index": None, "field": None, "message": message}]}


def rate_limit_keys() -> list[str]:
    return sorted(key for key in cache._cache if "ratelimit" in key)  # LocMemCache's store


def test_ingestion_over_the_limit_is_429_until_the_window_ends(api, customer, meters, limits):
    with time_machine.travel(T, tick=False):
        accepted = [post_event(api, n).status_code for n in range(3)]
        refused = post_event(api, 3)
    with time_machine.travel(T + timedelta(seconds=44.5), tick=False):
        last_moment = post_event(api, 3)
    with time_machine.travel(T + timedelta(seconds=45), tick=False):  # the next window
        next_window = post_event(api, 3)

    assert accepted == [202, 202, 202]
    assert refused.status_code == 429
    assert refused["Retry-After"] == "45"
    assert refused.json() == refused_body(45)
    assert last_moment.status_code == 429
    assert last_moment["Retry-After"] == "1"
    assert last_moment.json() == refused_body(1)
    assert next_window.status_code == 202
    assert sorted(UsageEvent.objects.values_list("event_id", flat=True)) == [
        "evt-0",
        "evt-1",
        "evt-2",
        "evt-3",
    ]


def test_a_refused_batch_stores_nothing(api, customer, meters, limits):
    limits["events"] = (1, 60)
    batch = {"events": [make_event(event_id=f"b-{n}", timestamp=iso(T)) for n in range(3)]}
    with time_machine.travel(T, tick=False):
        assert post_event(api, 0).status_code == 202
        refused = api.post(EVENTS_URL, batch, format="json")

    assert refused.status_code == 429
    assert list(UsageEvent.objects.values_list("event_id", flat=True)) == ["evt-0"]


def test_each_key_has_its_own_count_under_its_id(api, service_key, customer, meters, limits):
    other_key, other_plaintext = services.create_api_key(name="other")
    with time_machine.travel(T, tick=False):
        first = [post_event(api, n).status_code for n in range(4)]
        other = post_event(client_for(other_plaintext), 4).status_code
        counts = [
            cache.get(f"ratelimit:events:{key.pk}:{WINDOW}") for key in (service_key[0], other_key)
        ]

    assert first == [202, 202, 202, 429]
    assert other == 202
    assert counts == [4, 1]
    assert rate_limit_keys() == sorted(
        [
            f":1:ratelimit:events:{service_key[0].pk}:{WINDOW}",
            f":1:ratelimit:events:{other_key.pk}:{WINDOW}",
        ]
    )


def test_reads_and_writes_are_counted_apart_from_ingestion(api, customer, meters, limits):
    customer_body = {"customer_id": "initech", "name": "Initech"}
    with time_machine.travel(T, tick=False):
        events = [post_event(api, n).status_code for n in range(4)]
        reads = [api.get("/api/v1/meters") for _ in range(3)]
        usage = api.get("/api/v1/customers/acme/usage")
        writes = [api.post("/api/v1/customers", customer_body, format="json") for _ in range(3)]

    assert events == [202, 202, 202, 429]
    assert [r.status_code for r in reads] == [200, 200, 429]
    assert usage.status_code == 429  # the same read budget as /meters
    assert reads[2]["Retry-After"] == "45"
    assert reads[2].json() == refused_body(45)
    assert [w.status_code for w in writes] == [201, 200, 429]
    assert writes[2].json() == refused_body(45)


def test_off_means_no_limit(api, customer, meters, limits):
    limits["events"] = None
    with time_machine.travel(T, tick=False):
        statuses = {post_event(api, n).status_code for n in range(10)}

    assert statuses == {202}
    assert rate_limit_keys() == []


def test_requests_without_a_valid_key_are_401_and_not_counted(customer, meters, limits):
    stranger = client_for("mk_AAAAAAAA_" + "B" * 40)
    with time_machine.travel(T, tick=False):
        statuses = [post_event(stranger, n).status_code for n in range(5)]
        anonymous = post_event(APIClient(), 5).status_code

    assert statuses == [401] * 5
    assert anonymous == 401
    assert rate_limit_keys() == []


def test_the_api_stays_up_when_the_cache_is_down(
    api, service_key, customer, meters, settings, caplog
):
    settings.BILLING_RATE_LIMITS = {"events": (1, 60), "reads": (1, 60), "writes": (1, 60)}
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
    with caplog.at_level("WARNING", logger="metering.throttling"):
        statuses = [post_event(api, n).status_code for n in range(3)]
        reads = [api.get("/api/v1/meters").status_code for _ in range(2)]

    assert statuses == [202, 202, 202]
    assert reads == [200, 200]
    assert UsageEvent.objects.count() == 3
    messages = [r.getMessage() for r in caplog.records if r.name == "metering.throttling"]
    assert len(messages) == 5
    prefix = f"rate limit not checked for API key {service_key[0].pk}: cache error "
    assert all(m.startswith(prefix) for m in messages), messages


# --- Real processes: two gunicorn servers share one count --------------------------------------


def server_env(**env: str) -> dict[str, str]:
    """The test services' environment; the cache is the embedded one unless CACHE_URL is given."""
    environment = service_env(**env)
    for name in ("CACHE_URL", "REDIS_URL"):
        if name not in env:
            environment.pop(name, None)
    return environment


def start_gunicorn(port: int, log, **env: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "billing_project.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            "1",
            "--no-control-socket",
        ],
        cwd=ROOT,
        env=server_env(**env),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )

    def answers() -> bool:
        try:
            requests.get(f"http://127.0.0.1:{port}/api/v1/meters", timeout=5)
        except requests.RequestException:
            return process.poll() is not None
        return True

    wait_for(answers, timeout=30, what=f"gunicorn on port {port}")
    if process.poll() is not None:
        raise RuntimeError(f"gunicorn exited: {log.read_text()[-2000:]}")
    return process


def get_meters(port: int, plaintext: str) -> requests.Response:
    return requests.get(
        f"http://127.0.0.1:{port}/api/v1/meters",
        headers={"Authorization": f"Bearer {plaintext}"},
        timeout=10,
    )


def alternate(ports: list[int], plaintext: str, count: int) -> list[requests.Response]:
    """`count` requests, taking turns between the servers."""
    return [get_meters(ports[n % 2], plaintext) for n in range(count)]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.needs("redis-server")
def test_two_servers_share_one_count_in_redis_and_fail_open_without_it(meters, tmp_path):
    _, plaintext = services.create_api_key(name="fleet")
    ports = [free_port(), free_port()]
    # A day-long window: the test cannot straddle two windows (unless run across midnight UTC).
    env = {"BILLING_RATE_LIMIT_READS": "4/day", "BILLING_VAR_DIR": str(tmp_path / "var")}
    servers: list[subprocess.Popen] = []
    try:
        with redis_server(tmp_path) as redis_url:
            for n, port in enumerate(ports):
                log = tmp_path / f"gunicorn-{n}.log"
                servers.append(start_gunicorn(port, log, CACHE_URL=redis_url, **env))
            shared = alternate(ports, plaintext, 6)
        without_cache = alternate(ports, plaintext, 4)  # Redis is stopped
    finally:
        for server in servers:
            stop(server)

    assert [r.status_code for r in shared] == [200, 200, 200, 200, 429, 429]
    for refused in shared[4:]:
        wait = refused.headers["Retry-After"]
        assert 1 <= int(wait) <= 86400
        assert refused.json() == refused_body(int(wait))
    assert [r.status_code for r in without_cache] == [200, 200, 200, 200]
    logs = "".join((tmp_path / f"gunicorn-{n}.log").read_text() for n in range(2))
    assert logs.count("rate limit not checked for API key") == 4


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_servers_share_one_count_in_the_embedded_file_cache(meters, tmp_path):
    _, plaintext = services.create_api_key(name="fleet")
    ports = [free_port(), free_port()]
    env = {"BILLING_RATE_LIMIT_READS": "4/day", "BILLING_VAR_DIR": str(tmp_path / "var")}
    servers: list[subprocess.Popen] = []
    try:
        for n, port in enumerate(ports):
            servers.append(start_gunicorn(port, tmp_path / f"gunicorn-{n}.log", **env))
        shared = alternate(ports, plaintext, 6)
    finally:
        for server in servers:
            stop(server)

    assert [r.status_code for r in shared] == [200, 200, 200, 200, 429, 429]
    assert (tmp_path / "var" / "cache").is_dir()
