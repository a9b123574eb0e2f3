"""The signed webhook to the operator's agent platform: threshold crossed, paused, resumed; each
event delivered once, retried with backoff after a failure, given up after the last retry."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta

import pytest

from budgets import tasks as budget_tasks
from notifications import tasks
from notifications.models import OperatorWebhook
from tests.invoicing.conftest import T0
from tests.notifications.conftest import NOW, WEBHOOK_SECRET

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clock")]


def verify(request) -> dict:
    """Check the signature as the operator's receiver would; the decoded body."""
    signature = request.headers["x-billing-signature"]
    parts = dict(part.split("=", 1) for part in signature.split(","))
    assert set(parts) == {"t", "v1"}
    assert int(parts["t"]) == int(NOW.timestamp())  # the (frozen) time of sending
    expected = hmac.new(
        WEBHOOK_SECRET.encode(), parts["t"].encode() + b"." + request.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected)
    # a wrong secret or a changed body would not verify
    forged = hmac.new(b"other", parts["t"].encode() + b"." + request.body, hashlib.sha256)
    assert parts["v1"] != forged.hexdigest()
    assert request.headers["content-type"] == "application/json"
    return json.loads(request.body)


@pytest.fixture
def worker_retries():
    """Run a task's retries in-process as a worker would run them (eager tasks otherwise
    propagate the Retry to the caller); the countdown is not waited for."""
    from billing_project.celery import app

    app.conf.task_eager_propagates = False
    yield
    app.conf.task_eager_propagates = True


def events(endpoint) -> list[str]:
    return [r.headers["x-billing-event"] for r in endpoint.requests]


@pytest.fixture
def capped(on_tasks_plan, put_budget, operator_endpoint):
    put_budget(cap_minor=100, thresholds=[50, 80, 100], action="pause")
    assert operator_endpoint.requests == []  # setting a cap crosses nothing
    return on_tasks_plan


def test_threshold_crossing_posts_a_signed_event(capped, operator_endpoint, post_tasks):
    post_tasks(10)  # 50: the 50 % threshold

    (request,) = operator_endpoint.requests
    assert request.path == "/billing-events"
    body = verify(request)
    hook = OperatorWebhook.objects.get()
    assert request.headers["x-billing-event"] == "budget.threshold_crossed"
    assert request.headers["x-billing-event-id"] == hook.key == body["id"]
    assert body["event"] == "budget.threshold_crossed"
    data = body["data"]
    assert {k: data[k] for k in ("customer_id", "threshold", "cap_minor", "spent_minor")} == {
        "customer_id": "acme",
        "threshold": 50,
        "cap_minor": 100,
        "spent_minor": 50,
    }
    assert (data["status"], data["remaining_minor"], data["period_start"]) == (
        "warning",
        50,
        T0.isoformat(),
    )
    assert (hook.status, hook.attempts, hook.event) == ("delivered", 1, "budget.threshold_crossed")
    assert hook.delivered_at == NOW

    # a redelivered task posts nothing again
    tasks.deliver_operator_webhook(hook.pk)
    tasks.deliver_operator_webhook.delay(hook.pk)
    assert len(operator_endpoint.requests) == 1


@pytest.mark.usefixtures("worker_retries")
def test_a_failed_delivery_is_retried_until_delivered(capped, operator_endpoint, post_tasks):
    post_tasks(10)
    operator_endpoint.fail_next = 1

    post_tasks(6)  # 80: the platform answers 500 once, then 200 on the retry

    assert events(operator_endpoint) == ["budget.threshold_crossed"] * 3
    first_try, retry = operator_endpoint.requests[1:]
    assert first_try.body == retry.body
    assert verify(retry)["data"]["threshold"] == 80
    hook = OperatorWebhook.objects.get(payload__data__threshold=80)
    assert (hook.status, hook.attempts, hook.last_error) == ("delivered", 2, "")


@pytest.mark.usefixtures("worker_retries")
def test_delivery_gives_up_after_the_last_retry(capped, operator_endpoint, post_tasks):
    operator_endpoint.fail_next = 100

    post_tasks(10)

    hook = OperatorWebhook.objects.get()
    max_retries = tasks.deliver_operator_webhook.max_retries
    assert len(operator_endpoint.requests) == max_retries + 1
    assert (hook.status, hook.attempts, hook.last_error) == ("failed", max_retries + 1, "HTTP 500")
    # a failed hook is not retried by a redelivered task
    tasks.deliver_operator_webhook(hook.pk)
    assert len(operator_endpoint.requests) == max_retries + 1


def test_paused_and_resumed_are_posted_once_each(
    capped, operator_endpoint, post_tasks, put_budget, acknowledge
):
    post_tasks(25)  # paused at 20; five more while paused
    assert events(operator_endpoint) == ["budget.threshold_crossed"] * 3 + ["budget.paused"]
    paused = verify(operator_endpoint.requests[-1])
    assert (paused["data"]["status"], paused["data"]["spent_minor"]) == ("paused", 100)

    # raising the cap resumes, and re-arms the thresholds of the new cap: 125 of 200 is past
    # its 50% mark already
    put_budget(cap_minor=200, thresholds=[50, 80, 100], action="pause")
    put_budget(cap_minor=200, thresholds=[50, 80, 100], action="pause")  # no change: no event
    assert events(operator_endpoint)[4:] == ["budget.threshold_crossed", "budget.resumed"]
    resumed = verify(operator_endpoint.requests[-1])
    assert (resumed["data"]["status"], resumed["data"]["cap_minor"]) == ("warning", 200)

    post_tasks(15)  # 200: 80% and 100% of the new cap, paused again, then acknowledged
    assert acknowledge().status_code == 200
    assert acknowledge().status_code == 409
    assert events(operator_endpoint)[6:] == [
        "budget.threshold_crossed",
        "budget.threshold_crossed",
        "budget.paused",
        "budget.resumed",
    ]

    post_tasks(5)  # again past the cap, but acknowledged: nothing
    assert len(operator_endpoint.requests) == 10
    assert OperatorWebhook.objects.filter(status="delivered").count() == 10
    assert len({r.headers["x-billing-event-id"] for r in operator_endpoint.requests}) == 10


def test_a_new_period_resumes_a_paused_customer(
    capped, operator_endpoint, post_tasks, clock, django_capture_on_commit_callbacks
):
    post_tasks(20)
    assert events(operator_endpoint)[-1] == "budget.paused"

    clock.move_to(T0 + timedelta(hours=1, seconds=30))
    for _ in range(2):  # two beat runs
        with django_capture_on_commit_callbacks(execute=True):
            budget_tasks.check_budgets()

    assert events(operator_endpoint)[4:] == ["budget.resumed"]
    body = json.loads(operator_endpoint.requests[-1].body)
    assert (body["data"]["status"], body["data"]["period_start"]) == (
        "active",
        (T0 + timedelta(hours=1)).isoformat(),
    )


def test_no_webhook_without_a_configured_url(on_tasks_plan, put_budget, post_tasks, settings):
    settings.OPERATOR_WEBHOOK_URL = ""
    put_budget(cap_minor=100, action="pause")
    post_tasks(20)
    assert not OperatorWebhook.objects.exists()
