"""The e-mail provider's tracking webhook over HTTP: only the configured provider's URL exists,
only when it is authenticated (anymail's basic auth, or the provider's signing key), a forged
or unreadable post changes nothing, and production refuses to start without the
authentication. `ANYMAIL` comes from the environment."""

from __future__ import annotations

import base64
import importlib
import json
import re
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import clear_url_caches

from billing_project.settings.email import env_anymail, tracking_webhook_provider
from notifications import services
from notifications.models import Notification
from tests.e2e.processes import ROOT
from tests.notifications.conftest import OPS_EMAILS

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clock")]

POSTMARK = "anymail.backends.postmark.EmailBackend"
SECRET = "anymail-user:anymail-password"
RECIPIENT = "billing@acme.example"
TRACKING = "/anymail/postmark/tracking/"
BOUNCE = {
    "RecordType": "Bounce",
    "Type": "HardBounce",
    "MessageID": "esp-msg-1",
    "Email": RECIPIENT,
    "BouncedAt": "2026-01-01T00:00:00Z",
    "ID": 42,
}
# Every URL anymail itself offers, besides Postmark's tracking one.
OTHER_ANYMAIL_URLS = [
    "/anymail/sendgrid/tracking/",
    "/anymail/mailgun/tracking/",
    "/anymail/mailjet/tracking/",
    "/anymail/amazon_ses/tracking/",
    "/anymail/brevo/tracking/",
    "/anymail/sparkpost/tracking/",
    "/anymail/mandrill/",
    "/anymail/mandrill/tracking/",
    "/anymail/postmark/inbound/",
    "/anymail/sendgrid/inbound/",
    "/anymail/mailgun/inbound/",
    "/anymail/mailgun/inbound_mime/",
]


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def remount() -> None:
    import billing_project.urls
    import notifications.tracking_urls

    importlib.reload(notifications.tracking_urls)
    importlib.reload(billing_project.urls)
    clear_url_caches()


@pytest.fixture
def provider(settings):
    """Configure an e-mail backend and ANYMAIL as settings.py would, then mount the URLs."""

    def configure(backend: str, anymail: dict) -> str:
        settings.EMAIL_BACKEND = backend
        settings.ANYMAIL = anymail
        settings.EMAIL_TRACKING_PROVIDER = tracking_webhook_provider(
            backend, anymail, production=False
        )
        remount()
        # Messages the test causes are still captured in mail.outbox (not sent to the provider).
        settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
        return settings.EMAIL_TRACKING_PROVIDER

    yield configure
    settings.EMAIL_TRACKING_PROVIDER = ""
    remount()


@pytest.fixture
def sent(customer, django_capture_on_commit_callbacks, mailoutbox):
    with django_capture_on_commit_callbacks(execute=True):
        notification = services.queue_notification(
            key="budget-alert:test",
            kind=Notification.Kind.BUDGET_ALERT,
            recipients=[RECIPIENT],
            subject="80% of your budget used",
            context={"threshold": 80, "customer_name": "Acme Corp"},
            customer=customer,
        )
    Notification.objects.filter(pk=notification.pk).update(provider_message_id="esp-msg-1")
    mailoutbox.clear()
    return notification


def post(client, body, *, auth: str | None = None, content_type="application/json"):
    headers = {"HTTP_AUTHORIZATION": auth} if auth else {}
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post(TRACKING, data=data, content_type=content_type, **headers)


def snapshot() -> list[dict]:
    return list(Notification.objects.order_by("pk").values())


def test_without_an_anymail_provider_no_webhook_url_exists(client, provider):
    assert provider("django.core.mail.backends.console.EmailBackend", {}) == ""

    statuses = {
        url: client.post(url, "{}", content_type="application/json").status_code
        for url in [TRACKING, *OTHER_ANYMAIL_URLS]
    }

    assert set(statuses.values()) == {404}


def test_only_the_configured_providers_tracking_url_exists(client, provider):
    assert provider(POSTMARK, {"WEBHOOK_SECRET": SECRET}) == "postmark"

    others = {
        url: client.post(url, "{}", content_type="application/json").status_code
        for url in OTHER_ANYMAIL_URLS
    }

    assert set(others.values()) == {404}
    assert post(client, BOUNCE).status_code == 400  # there, and asking for credentials


def test_an_unauthenticated_provider_is_not_mounted_in_development(client, provider):
    assert provider(POSTMARK, {"POSTMARK_SERVER_TOKEN": "token"}) == ""

    assert post(client, BOUNCE).status_code == 404


@pytest.mark.parametrize(
    "auth", [None, basic("anymail-user:wrong"), basic("someone:else"), "Bearer " + SECRET]
)
def test_a_forged_bounce_changes_nothing(client, provider, sent, mailoutbox, auth):
    provider(POSTMARK, {"WEBHOOK_SECRET": SECRET})
    before = snapshot()

    first, second = post(client, BOUNCE, auth=auth), post(client, BOUNCE, auth=auth)

    assert (first.status_code, second.status_code) == (400, 400)
    assert snapshot() == before
    assert before[0]["status"] == "sent"
    assert mailoutbox == []


def test_an_authenticated_bounce_marks_the_message_once(
    client, provider, sent, mailoutbox, django_capture_on_commit_callbacks
):
    provider(POSTMARK, {"WEBHOOK_SECRET": SECRET})

    with django_capture_on_commit_callbacks(execute=True):
        first = post(client, BOUNCE, auth=basic(SECRET))
    with django_capture_on_commit_callbacks(execute=True):
        second = post(client, BOUNCE, auth=basic(SECRET))

    assert (first.status_code, second.status_code) == (200, 200)
    sent.refresh_from_db()
    assert (sent.status, sent.last_error) == ("bounced", f"bounced: {RECIPIENT}")
    assert [m.to for m in mailoutbox] == [OPS_EMAILS]
    assert Notification.objects.filter(kind="ops_bounce").count() == 1


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'"a string"',
        b"null",
        json.dumps({**BOUNCE, "RecordType": ["Bounce"]}).encode(),
        json.dumps({"FromFull": {"Email": "x@y.example"}}).encode(),  # an inbound message
        json.dumps({**BOUNCE, "BouncedAt": "9999-99-99T99:99:99Z"}).encode(),
    ],
)
def test_an_authenticated_post_it_cannot_read_is_400_and_changes_nothing(
    client, provider, sent, mailoutbox, body
):
    provider(POSTMARK, {"WEBHOOK_SECRET": SECRET})
    before = snapshot()

    response = post(client, body, auth=basic(SECRET))

    assert response.status_code == 400
    assert snapshot() == before
    assert mailoutbox == []


@pytest.mark.parametrize(
    ("message_id", "recipient"),
    [("esp\x00msg-1", RECIPIENT), ("m" * 201, RECIPIENT), ("esp-msg-1", "x\x00" * 400)],
)
def test_provider_fields_no_column_can_hold_never_fail(
    client, provider, sent, mailoutbox, django_capture_on_commit_callbacks, message_id, recipient
):
    provider(POSTMARK, {"WEBHOOK_SECRET": SECRET})
    body = {**BOUNCE, "MessageID": message_id, "Email": recipient}

    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, body, auth=basic(SECRET))

    assert response.status_code == 200
    sent.refresh_from_db()
    if message_id == "esp-msg-1":  # a known message: bounced, the address without its NULs
        assert (sent.status, sent.last_error) == ("bounced", "bounced: " + "x" * 254)
        notice = Notification.objects.get(kind="ops_bounce")
        assert len(notice.key) <= 200 and notice.key.startswith(f"ops-bounce:{sent.pk}:sha256:")
    else:
        assert sent.status == "sent"
        assert not Notification.objects.filter(kind="ops_bounce").exists()


def test_a_signing_key_authenticates_the_providers_webhook(client, provider):
    """Mailgun signs its webhooks: with its signing key the webhook is mounted and an
    unsigned post is refused."""
    assert (
        provider("anymail.backends.mailgun.EmailBackend", {"MAILGUN_WEBHOOK_SIGNING_KEY": "key-1"})
        == "mailgun"
    )
    unsigned = {
        "signature": {"timestamp": "1", "token": "t", "signature": "forged"},
        "event-data": {"event": "failed"},
    }

    response = client.post(
        "/anymail/mailgun/tracking/", json.dumps(unsigned), content_type="application/json"
    )

    assert response.status_code == 400
    assert client.post(TRACKING, "{}", content_type="application/json").status_code == 404


# --- Settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "anymail", "production", "mounted"),
    [
        ("django.core.mail.backends.smtp.EmailBackend", {}, True, ""),
        ("anymail.backends.test.EmailBackend", {}, True, ""),
        ("anymail.backends.scaleway.EmailBackend", {}, True, ""),  # has no tracking webhook
        (POSTMARK, {"WEBHOOK_SECRET": SECRET}, True, "postmark"),
        (POSTMARK, {}, False, ""),
        (
            "anymail.backends.mailgun.EmailBackend",
            {"MAILGUN_WEBHOOK_SIGNING_KEY": "k"},
            True,
            "mailgun",
        ),
        ("anymail.backends.mandrill.EmailBackend", {"MANDRILL_WEBHOOK_KEY": "k"}, True, "mandrill"),
    ],
)
def test_which_tracking_webhook_is_mounted(backend, anymail, production, mounted):
    assert tracking_webhook_provider(backend, anymail, production=production) == mounted


@pytest.mark.parametrize(
    ("backend", "anymail", "names"),
    [
        (POSTMARK, {}, "ANYMAIL_WEBHOOK_SECRET"),
        (POSTMARK, {"POSTMARK_SERVER_TOKEN": "t"}, "ANYMAIL_WEBHOOK_SECRET"),
        (
            "anymail.backends.mailgun.EmailBackend",
            {"MAILGUN_API_KEY": "k"},
            "ANYMAIL_WEBHOOK_SECRET (user:password, as in the webhook URL given to the provider) "
            "or ANYMAIL_MAILGUN_WEBHOOK_SIGNING_KEY",
        ),
    ],
)
def test_production_refuses_an_unauthenticated_tracking_webhook(backend, anymail, names):
    with pytest.raises(ImproperlyConfigured, match=re.escape("set " + names)):
        tracking_webhook_provider(backend, anymail, production=True)


def test_anymail_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("ANYMAIL", json.dumps({"POSTMARK_SERVER_TOKEN": "from-json", "A": "1"}))
    monkeypatch.setenv("ANYMAIL_POSTMARK_SERVER_TOKEN", "from-variable")
    monkeypatch.setenv("ANYMAIL_WEBHOOK_SECRET", SECRET)

    assert env_anymail() == {
        "POSTMARK_SERVER_TOKEN": "from-variable",
        "A": "1",
        "WEBHOOK_SECRET": SECRET,
    }


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ANYMAIL", "not json", "ANYMAIL must be a JSON object"),
        ("ANYMAIL", "[1, 2]", "ANYMAIL must be a JSON object"),
        ("ANYMAIL_WEBHOOK_SECRET", "no-colon", "ANYMAIL_WEBHOOK_SECRET must be user:password"),
        ("ANYMAIL", '{"WEBHOOK_SECRET": 5}', "ANYMAIL_WEBHOOK_SECRET must be user:password"),
        ("ANYMAIL", '{"WEBHOOK_SECRET": []}', "ANYMAIL_WEBHOOK_SECRET must be user:password"),
    ],
)
def test_bad_anymail_settings_are_refused(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)

    with pytest.raises(ImproperlyConfigured, match=message):
        env_anymail()


def test_a_production_process_does_not_start_with_a_forgeable_webhook():
    env = {
        "PATH": "/usr/bin:/bin",
        "BILLING_ENV": "production",
        "SECRET_KEY": "s" * 50,
        "ALLOWED_HOSTS": "billing.example",
        "EMAIL_BACKEND": POSTMARK,
        "ANYMAIL_POSTMARK_SERVER_TOKEN": "token",
        "DJANGO_SETTINGS_MODULE": "billing_project.settings",
    }
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "django.core.exceptions.ImproperlyConfigured: EMAIL_BACKEND is anymail's postmark: set "
        "ANYMAIL_WEBHOOK_SECRET (user:password, as in the webhook URL given to the provider), "
        "or anyone can post forged delivery and bounce events"
    )
