"""Security headers on every page (the Content-Security-Policy among them), the pages that need
a policy of their own, and production settings: `check --deploy` clean, HTTPS only, secure
cookies, no start without a real SECRET_KEY, and none without the collected static files."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from invoicing.models import Invoice
from invoicing.services import closing, plans, subscriptions
from metering.models import PortalMembership
from portal.views import DOCUMENT_CSP
from tests.e2e.processes import ROOT
from tests.invoicing.conftest import EXAMPLE_PRICES, T0

pytestmark = pytest.mark.django_db

POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "style-src-attr": "'unsafe-inline'",
    "img-src": "'self' data:",
    "font-src": "'self'",
    "connect-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def policy_of(response) -> dict[str, str]:
    directives = (
        part.strip().split(" ", 1) for part in response["Content-Security-Policy"].split(";")
    )
    return {name: value for name, value in directives}


@pytest.mark.parametrize("url", ["/portal/login/", "/admin/login/", "/api/docs/", "/api/v1/meters"])
def test_every_page_has_the_policy_and_the_security_headers(client, url):
    response = client.get(url)

    assert policy_of(response) == POLICY
    assert {name: response[name] for name in HEADERS} == HEADERS


def test_the_api_docs_need_no_inline_script_or_style(client):
    page = client.get("/api/docs/").content.decode()
    script = client.get("/api/docs/?script=")

    sidecar = "/static/drf_spectacular_sidecar/swagger-ui-dist"
    assert re.findall(r"<script[^>]*>", page) == [
        f'<script src="{sidecar}/swagger-ui-bundle.js">',
        f'<script src="{sidecar}/swagger-ui-standalone-preset.js">',
        '<script src="/api/docs/?script=">',
    ]
    assert "<style" not in page and "style=" not in page
    assert script.status_code == 200
    assert script["Content-Type"] == "application/javascript"


def test_the_invoice_document_keeps_its_own_stricter_policy(customer, meters, settings):
    settings.BILLING_GRACE_PERIOD = 600
    plan = plans.create_plan_version(
        code="pro", name="Pro", currency="USD", interval="hour", prices=EXAMPLE_PRICES
    )
    subscriptions.subscribe_customer(customer=customer, plan=plan, now=T0)
    closing.close_due_periods(now=T0 + timedelta(hours=1, minutes=10))
    invoice = Invoice.objects.get(customer=customer)
    member = User.objects.create_user("acme-user")
    PortalMembership.objects.create(user=member, customer=customer)
    finance = User.objects.create_user("fran", is_staff=True)
    finance.groups.add(Group.objects.get(name="Finance"))
    customer_client, finance_client = Client(), Client()
    customer_client.force_login(member)
    finance_client.force_login(finance)
    portal_copy = customer_client.get(f"/portal/invoices/{invoice.pk}/document/")
    admin_copy = finance_client.get(f"/admin/invoicing/invoice/{invoice.pk}/document/")

    assert portal_copy.status_code == admin_copy.status_code == 200
    assert portal_copy["Content-Security-Policy"] == DOCUMENT_CSP
    assert admin_copy["Content-Security-Policy"] == DOCUMENT_CSP


# --- Production settings, in a fresh process --------------------------------------------------

PRODUCTION_PROBE = """
import json
import django
django.setup()
from django.conf import settings
from django.test import Client

client = Client(HTTP_HOST="example.com")
plain = client.get("/api/v1/meters")
secure = client.get("/api/v1/meters", secure=True)
health = client.get("/healthz")
names = [
    "DEBUG", "SESSION_COOKIE_SECURE", "SESSION_COOKIE_HTTPONLY", "SESSION_COOKIE_SAMESITE",
    "CSRF_COOKIE_SECURE", "CSRF_COOKIE_HTTPONLY", "CSRF_COOKIE_SAMESITE", "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD",
    "SECURE_PROXY_SSL_HEADER", "X_FRAME_OPTIONS",
]
print(json.dumps({
    "settings": {name: getattr(settings, name) for name in names},
    "plain": [plain.status_code, plain.get("Location")],
    "secure": [secure.status_code, secure.get("Strict-Transport-Security")],
    "health": health.status_code,
}))
"""


def production_env(tmp_path, var_dir: Path | None = None, **overrides: str) -> dict[str, str]:
    """Only what this test sets (and PATH, HOME): nothing leaks in from the test process.
    `var_dir` holds the static files (var/static): tmp_path/var, empty, unless given."""
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    env.update(
        DJANGO_SETTINGS_MODULE="billing_project.settings",
        BILLING_ENV="production",
        SECRET_KEY=secrets.token_urlsafe(40)[:50],
        ALLOWED_HOSTS="example.com",
        BILLING_VAR_DIR=str(var_dir or tmp_path / "var"),
        DATABASE_URL=f"sqlite:///{tmp_path / 'probe.sqlite3'}",
    )
    env.update(overrides)
    return {name: value for name, value in env.items() if value != ""}


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def collected_var(tmp_path_factory) -> Path:
    """A var/ directory whose static/ holds what `collectstatic` collects (once per module)."""
    base = tmp_path_factory.mktemp("collected")
    result = run(["manage.py", "collectstatic", "--no-input", "-v", "0"], production_env(base))
    assert result.returncode == 0, result.stdout + result.stderr
    return base / "var"


def test_check_deploy_finds_no_issues(tmp_path, collected_var):
    result = run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        production_env(tmp_path, var_dir=collected_var),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "System check identified no issues (0 silenced).\n"


def test_production_is_https_only_with_secure_cookies(tmp_path):
    result = run(["-c", PRODUCTION_PROBE], production_env(tmp_path))

    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["settings"] == {
        "DEBUG": False,
        "SESSION_COOKIE_SECURE": True,
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "CSRF_COOKIE_SECURE": True,
        "CSRF_COOKIE_HTTPONLY": True,
        "CSRF_COOKIE_SAMESITE": "Lax",
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": True,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "X_FRAME_OPTIONS": "DENY",
    }
    assert probe["plain"] == [301, "https://example.com/api/v1/meters"]
    assert probe["secure"] == [401, "max-age=31536000; includeSubDomains; preload"]
    assert probe["health"] == 200  # load balancers probe over plain HTTP: no redirect


@pytest.mark.parametrize(
    "secret_key",
    ["", "too-short-0123456789", "dev-insecure-secret-key-do-not-use-in-production"],
    ids=["missing", "short", "the-development-key"],
)
def test_production_refuses_to_start_without_a_real_secret_key(tmp_path, secret_key):
    result = run(["manage.py", "check"], production_env(tmp_path, SECRET_KEY=secret_key))

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.rstrip().endswith(
        "django.core.exceptions.ImproperlyConfigured: SECRET_KEY must be set to a random value "
        "of at least 32 characters in production"
    )


# --- Production start-up needs the collected static files -------------------------------------

HINT = (
    "HINT: run `python manage.py collectstatic --no-input` on this machine (part of every "
    "release) before the web processes start"
)


def start_up_failures(env: dict[str, str]) -> dict[str, tuple[int, str]]:
    """(exit status, last line of stderr) of what starts a production web process."""
    commands = {
        "gunicorn": ["-m", "gunicorn", "--check-config", "billing_project.wsgi"],
        "wsgi": ["-c", "import billing_project.wsgi"],
        "asgi": ["-c", "import billing_project.asgi"],
    }
    results = {name: run(args, env) for name, args in commands.items()}
    return {
        name: (result.returncode, result.stderr.rstrip().splitlines()[-1] if result.stderr else "")
        for name, result in results.items()
    }


def test_without_collectstatic_production_refuses_to_start(tmp_path):
    env = production_env(tmp_path)
    manifest = tmp_path / "var" / "static" / "staticfiles.json"
    problem = (
        f"the static files manifest {manifest} does not exist: every page with a static file "
        "would answer 500"
    )

    check = run(["manage.py", "check", "--deploy"], env)
    started = start_up_failures(env)

    assert check.returncode == 1
    assert f"?: (billing_project.E001) {problem}\n\t{HINT}\n" in check.stderr
    refusal = (
        f"django.core.exceptions.ImproperlyConfigured: billing_project.E001: {problem} "
        f"(hint: {HINT.removeprefix('HINT: ')})"
    )
    assert started == {"gunicorn": (1, refusal), "wsgi": (1, refusal), "asgi": (1, refusal)}
    assert not (tmp_path / "var" / "static").exists()  # nothing collected behind our back


def test_a_manifest_of_another_release_refuses_to_start(tmp_path, collected_var):
    """A file this release added is not in the manifest an older collectstatic wrote."""
    var = tmp_path / "var"
    shutil.copytree(collected_var / "static", var / "static")
    manifest = var / "static" / "staticfiles.json"
    stored = json.loads(manifest.read_text())
    del stored["paths"]["portal/portal.css"]
    manifest.write_text(json.dumps(stored))
    env = production_env(tmp_path, var_dir=var)
    problem = (
        f"the static files manifest {manifest} lacks 1 file(s) of this release "
        "(portal/portal.css), collected from another one: the pages naming them would answer 500"
    )

    check = run(["manage.py", "check", "--deploy"], env)
    started = start_up_failures(env)

    assert check.returncode == 1
    assert f"?: (billing_project.E001) {problem}\n\t{HINT}\n" in check.stderr
    refusal = (
        f"django.core.exceptions.ImproperlyConfigured: billing_project.E001: {problem} "
        f"(hint: {HINT.removeprefix('HINT: ')})"
    )
    assert started == {"gunicorn": (1, refusal), "wsgi": (1, refusal), "asgi": (1, refusal)}


COLLECTED_PROBE = """
import json, re
from billing_project.wsgi import application  # refuses to load without collected static
from django.test import Client

client = Client(HTTP_HOST="example.com")
login = client.get("/portal/login/", secure=True)
css = re.search(r'href="(/static/portal/portal\\.[0-9a-f]{12}\\.css)"', login.text).group(1)
served = client.get(css, secure=True)
icon = client.get("/favicon.ico", secure=True)
print(json.dumps({"login": login.status_code, "css": served.status_code,
                  "type": served["Content-Type"], "icon": icon.status_code}))
"""


def test_with_collectstatic_production_starts_and_serves_its_pages(tmp_path, collected_var):
    env = production_env(tmp_path, var_dir=collected_var)

    started = start_up_failures(env)
    probe = run(["-c", COLLECTED_PROBE], env)

    assert started == {"gunicorn": (0, ""), "wsgi": (0, ""), "asgi": (0, "")}
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout.strip().splitlines()[-1]) == {
        "login": 200,
        "css": 200,
        "type": 'text/css; charset="utf-8"',
        "icon": 200,
    }
