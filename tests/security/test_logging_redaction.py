"""API keys never reach the logs: the root handler's filter masks keys, Authorization headers
and bearer tokens in messages, arguments and tracebacks, including Django's request logs."""

from __future__ import annotations

import io
import logging

import pytest
from rest_framework.test import APIClient

from billing_project.log_redaction import RedactSecretsFilter, redact

pytestmark = pytest.mark.django_db

KEY = "mk_AbCd1234_" + "x" * 20 + "Y" * 20


@pytest.fixture
def console():
    """The output of the root handler that settings.LOGGING installs (the only one with the
    filter), captured while the test runs."""
    [handler] = [
        h
        for h in logging.getLogger().handlers
        if any(isinstance(f, RedactSecretsFilter) for f in h.filters)
    ]
    stream = io.StringIO()
    previous = handler.setStream(stream)
    yield stream
    handler.setStream(previous)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"key {KEY} used", "key mk_AbCd1234_[REDACTED] used"),
        (f"Authorization: Bearer {KEY}", "Authorization: [REDACTED]"),
        ("authorization=Basic dXNlcjpwYXNz", "authorization=[REDACTED]"),
        (
            f"{{'HTTP_AUTHORIZATION': 'Bearer {KEY}', 'PATH': '/x'}}",
            "{'HTTP_AUTHORIZATION': '[REDACTED]', 'PATH': '/x'}",
        ),
        ('{"Authorization": "Bearer abc.def"}', '{"Authorization": "[REDACTED]"}'),
        ("sent bearer abc.DEF-123 to the API", "sent bearer [REDACTED] to the API"),
        (
            "nothing secret: mk_short_key, authorization failed",
            "nothing secret: mk_short_key, authorization failed",
        ),
    ],
)
def test_redact(text, expected):
    assert redact(text) == expected


def test_a_key_in_a_refused_request_is_masked(service_key, console, caplog):
    api_key, plaintext = service_key
    with caplog.at_level(logging.WARNING):
        response = APIClient().get(f"/api/v1/customers/{plaintext}/usage")

    masked = f"Unauthorized: /api/v1/customers/mk_{api_key.prefix}_[REDACTED]/usage"
    assert response.status_code == 401
    assert [r.getMessage() for r in caplog.records] == [masked]
    assert console.getvalue().endswith(f" WARNING django.request {masked}\n")
    assert plaintext not in caplog.text
    assert plaintext not in console.getvalue()


def test_a_key_sent_as_a_header_is_never_logged(service_key, customer, console, caplog):
    _, plaintext = service_key
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    with caplog.at_level(logging.DEBUG):
        client.get("/api/v1/customers/nobody/usage")  # 404, logged by django.request
        client.get("/api/v1/meters")
        APIClient(HTTP_AUTHORIZATION=f"Bearer {plaintext}x").get("/api/v1/meters")  # 401

    assert [r.getMessage() for r in caplog.records if r.name == "django.request"] == [
        "Not Found: /api/v1/customers/nobody/usage",
        "Unauthorized: /api/v1/meters",
    ]
    assert plaintext not in caplog.text
    assert plaintext not in console.getvalue()


def test_a_record_with_a_key_in_its_message_arguments_and_traceback(console, caplog):
    logger = logging.getLogger("billing.test")
    try:
        raise ValueError(f"cannot use {KEY}")
    except ValueError:
        with caplog.at_level(logging.INFO):
            logger.exception(
                "agent sent %s with headers %r", KEY, {"Authorization": f"Bearer {KEY}"}
            )

    [record] = caplog.records
    assert record.getMessage() == (
        "agent sent mk_AbCd1234_[REDACTED] with headers {'Authorization': '[REDACTED]'}"
    )
    assert record.exc_text.endswith("ValueError: cannot use mk_AbCd1234_[REDACTED]")
    assert KEY not in caplog.text
    output = console.getvalue()
    assert "ERROR billing.test agent sent mk_AbCd1234_[REDACTED] with headers" in output
    assert output.rstrip().endswith("ValueError: cannot use mk_AbCd1234_[REDACTED]")
    assert KEY not in output


def test_a_celery_worker_logs_through_the_same_filter(tmp_path):
    """A worker sets up its own logging (it takes over the root logger): what it writes to its
    log file, from any logger and from a task's logger, is masked too."""
    from celery.utils.log import get_task_logger

    from billing_project.celery import app

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    task_logger = get_task_logger("billing.test_task")
    saved_task = task_logger.handlers[:]
    logfile = tmp_path / "worker.log"
    try:
        app.log.already_setup = False
        app.log.setup(loglevel=logging.INFO, logfile=str(logfile), colorize=False)
        logging.getLogger("billing.worker").warning("retrying with %s", KEY)
        task_logger.warning("task used Authorization: Bearer %s", KEY)
        for handler in root.handlers + task_logger.handlers:
            handler.flush()
    finally:
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()
        root.handlers[:], task_logger.handlers[:] = saved[0], saved_task
        root.setLevel(saved[1])
        app.log.already_setup = False
    written = logfile.read_text()
    assert "retrying with mk_AbCd1234_[REDACTED]" in written
    assert "task used Authorization: [REDACTED]" in written
    assert KEY not in written
