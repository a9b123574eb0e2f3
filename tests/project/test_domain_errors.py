"""One base for the errors clients are told about (billing_project.errors.DomainError), one
shape for all of them, whichever layer answers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.test import Client

from billing_project.api_errors import exception_handler
from billing_project.errors import (
    BadRequest,
    DomainError,
    ErrorItem,
    InvalidApiKey,
    RateLimited,
    error_response,
)
from budgets.services import BudgetInvalid, NothingPaused
from invoicing.services import plans, subscriptions
from invoicing.services.invoices import TransitionNotAllowed
from invoicing.services.plans import PlanInvalid
from invoicing.services.subscriptions import SubscriptionInvalid
from invoicing.stripe.client import InvalidWebhook
from metering.event_parsing import BodyError, FieldError
from metering.services import IngestionRejected

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("error", "status", "code", "items"),
    [
        (
            IngestionRejected([FieldError(3, "quantity", "must not be negative")]),
            422,
            "invalid_events",
            [(3, "quantity", "must not be negative")],
        ),
        (
            BodyError("body is not valid JSON"),
            400,
            "malformed_body",
            [(None, "body", "body is not valid JSON")],
        ),
        (
            PlanInvalid({"currency": "unsupported", "prices[0].meter": "unknown meter"}),
            422,
            "invalid_plan",
            [(None, "currency", "unsupported"), (None, "prices[0].meter", "unknown meter")],
        ),
        (
            SubscriptionInvalid("unknown plan", field="plan"),
            422,
            "invalid_subscription",
            [(None, "plan", "unknown plan")],
        ),
        (
            BudgetInvalid({"cap_minor": "must be > 0"}),
            422,
            "invalid_budget",
            [(None, "cap_minor", "must be > 0")],
        ),
        (
            NothingPaused("nothing is paused"),
            409,
            "nothing_paused",
            [(None, None, "nothing is paused")],
        ),
        (
            TransitionNotAllowed("invoice INV-1 is paid; cannot become void"),
            409,
            "transition_not_allowed",
            [(None, None, "invoice INV-1 is paid; cannot become void")],
        ),
        (
            InvalidWebhook("bad signature"),
            400,
            "invalid_webhook",
            [(None, None, "invalid webhook: bad signature")],
        ),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
def test_every_domain_exception_is_a_domain_error_with_its_status_and_body(
    error, status, code, items
):
    assert isinstance(error, DomainError)
    assert (error.status, error.code) == (status, code)
    assert error.details == [ErrorItem(*item) for item in items]
    assert error.body() == {"errors": [{"index": i, "field": f, "message": m} for i, f, m in items]}


def test_the_messages_callers_show_stay_as_they_were():
    """The admin and the portal show str(exc)."""
    assert str(PlanInvalid({"a": "x", "b": "y"})) == "a: x; b: y"
    assert str(BudgetInvalid({"cap_minor": "must be > 0"})) == "cap_minor: must be > 0"
    assert str(SubscriptionInvalid("unknown plan", field="plan")) == "unknown plan"
    assert str(NothingPaused("nothing is paused")) == "nothing is paused"
    assert str(IngestionRejected([FieldError(0, "meter", "unknown")] * 2)) == "2 invalid field(s)"
    assert PlanInvalid({"a": "x"}).errors == {"a": "x"}
    assert SubscriptionInvalid("unknown plan", field="plan").field == "plan"


def test_the_handler_answers_any_domain_error_with_its_status_headers_and_body():
    class Gone(DomainError):
        status = 410
        code = "gone"

    response = exception_handler(Gone("no longer here", headers={"X-Why": "moved"}), {})
    assert response.status_code == 410
    assert response["X-Why"] == "moved"
    assert response.data == {
        "errors": [{"index": None, "field": None, "message": "no longer here"}]
    }


def test_request_errors_carry_their_headers():
    assert InvalidApiKey("bad key").headers == {"WWW-Authenticate": 'Bearer realm="api"'}
    assert RateLimited(7).headers == {"Retry-After": "7"}
    assert str(RateLimited(7)) == "rate limit exceeded for this API key: retry in 7 seconds"
    assert RateLimited(None).headers == {}


def test_outside_drf_the_same_error_is_the_same_bytes(api, subscribed_acme):
    """A middleware's answer (error_response) cannot be told from the API handler's."""
    through_api = api.post("/api/v1/customers/acme/budget/acknowledge")
    assert through_api.status_code == 409
    plain = error_response(NothingPaused("nothing is paused"))
    assert (plain.status_code, plain["Content-Type"]) == (409, "application/json")
    assert plain.content == through_api.content
    assert BadRequest("caf\u00e9 refused").body()["errors"][0]["message"] == "café refused"
    assert error_response(BadRequest("café")).content == (
        '{"errors":[{"index":null,"field":null,"message":"café"}]}'.encode()
    )


def test_a_refused_stripe_webhook_answers_in_the_api_shape(settings):
    settings.STRIPE_WEBHOOK_SECRET = ""
    response = Client().post("/webhooks/stripe", data=b"{}", content_type="application/json")
    assert response.status_code == 400
    assert response.content == (
        b'{"errors":[{"index":null,"field":null,'
        b'"message":"invalid webhook: STRIPE_WEBHOOK_SECRET is not set"}]}'
    )


@pytest.fixture
def subscribed_acme(customer, meters):
    plan = plans.create_plan_version(
        code="basic", name="Basic", currency="USD", interval="month", prices=[]
    )
    subscriptions.subscribe_customer(customer=customer, plan=plan, now=datetime.now(tz=UTC))
    return customer
