"""Signed Stripe webhooks of unexpected shape never get a 500 (Stripe retries those and disables
endpoints that keep failing): an envelope not understood is refused with 400 and a JSON error,
storing nothing; an understood envelope is stored (what PostgreSQL cannot hold replaced) and
acknowledged with 200, and an object not understood changes nothing but its own row."""

from __future__ import annotations

import copy
import json
import time

import pytest

from audit.models import AuditEntry
from invoicing.models import StripeInvoiceSync, StripeWebhookEvent
from invoicing.stripe.webhooks import REPLACED

pytestmark = pytest.mark.django_db(transaction=True)


def post(client, fake, body: bytes, signature=None):
    """POST `body` signed with the test secret (or with the given header)."""
    header = fake.sign(body) if signature is None else signature
    return client.post(
        "/webhooks/stripe", data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header
    )


def books(invoice):
    """Everything a webhook may change: our invoice, its delivery, the audit log, the events."""
    invoice.refresh_from_db()
    sync = StripeInvoiceSync.objects.get(invoice=invoice)
    return (
        invoice.status,
        invoice.paid_at,
        invoice.voided_at,
        sync.stripe_status,
        sync.stripe_status_at,
        list(AuditEntry.objects.order_by("pk").values_list("pk", "action")),
        list(StripeWebhookEvent.objects.values_list("event_id", flat=True)),
    )


@pytest.fixture
def paid_event(open_invoice, fake_stripe):
    """A well-formed invoice.paid for our open invoice (paid in Stripe meanwhile)."""
    return fake_stripe.event(
        "invoice.paid", fake_stripe.set_invoice_status(open_invoice.stripe_invoice_id, "paid")
    )


def changed(event, path, value):
    """A deep copy of `event` with the value at `path` (keys) set, or removed if `value` is
    ...; serialized as json.dumps does (a lone surrogate as its escape)."""
    event = copy.deepcopy(event)
    *parents, last = path
    target = event
    for key in parents:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return json.dumps(event).encode()


def with_number(event, key, literal):
    """The event with `key` set to a JSON number literal json.dumps would not write."""
    return json.dumps({**event, key: "@@"}).replace('"@@"', literal).encode()


def nested(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


NOT_AN_OBJECT = "the event is not a JSON object"
ID_STR = "id is not a non-empty string"
ID_NUL = "id holds a NUL or an unpaired surrogate"
CREATED = "created is not a whole number of seconds"
WHEN = "created is not a time at which Stripe can have sent it"
DATA = "data.object is not a JSON object"
# shape -> (the body, the start of the refusal's message)
BODIES = {
    "an array": (lambda e: b"[]", NOT_AN_OBJECT),
    "an empty object": (lambda e: b"{}", "id is not a non-empty string"),
    "null": (lambda e: b"null", NOT_AN_OBJECT),
    "a string": (lambda e: b'"invoice.paid"', NOT_AN_OBJECT),
    "a number": (lambda e: b"42", NOT_AN_OBJECT),
    "not JSON": (lambda e: json.dumps(e).encode()[:-7], "the body is not JSON: JSONDecodeError"),
    "not UTF-8": (
        lambda e: json.dumps(e).encode().replace(b'"paid"', b'"p\xffid"'),
        "'utf-8' codec can't decode byte 0xff",
    ),
    "a UTF-8 byte order mark": (
        lambda e: b"\xef\xbb\xbf" + json.dumps(e).encode(),
        "the body is not JSON: JSONDecodeError",
    ),
    "NaN": (lambda e: with_number(e, "created", "NaN"), "the body is not JSON: ValueError"),
    "Infinity": (
        lambda e: with_number(e, "created", "-Infinity"),
        "the body is not JSON: ValueError",
    ),
    "a float beyond range": (
        lambda e: with_number(e, "created", "1e999"),
        "the body is not JSON: ValueError",
    ),
    "a 5000-digit number": (
        lambda e: with_number(e, "created", "9" * 5000),
        "the body is not JSON: ValueError",
    ),
    "nested 100000 deep": (
        lambda e: b"[" * 100_000 + b"]" * 100_000,
        "the body is not JSON: RecursionError",
    ),
    "data.object nested 40 deep": (
        lambda e: changed(e, ["data", "object", "lines"], nested(40)),
        "the event nests deeper than 32 levels",
    ),
    "object v2.core.event with a v1 created": (
        lambda e: changed(e, ["object"], "v2.core.event"),
        "created is not an RFC 3339 time",
    ),
    "object account": (
        lambda e: changed(e, ["object"], "account"),
        'the event\'s "object" is neither "event" nor "v2.core.event"',
    ),
    "id missing": (lambda e: changed(e, ["id"], ...), ID_STR),
    "id empty": (lambda e: changed(e, ["id"], ""), ID_STR),
    "id a number": (lambda e: changed(e, ["id"], 42), ID_STR),
    "id an object": (lambda e: changed(e, ["id"], {"id": "evt_1"}), ID_STR),
    "id over the column length": (
        lambda e: changed(e, ["id"], "evt_" + "x" * 252),
        "id is longer than 255 characters",
    ),
    "id with a NUL": (lambda e: changed(e, ["id"], "evt_\x00x"), ID_NUL),
    "id with an unpaired surrogate": (lambda e: changed(e, ["id"], "evt_\ud800"), ID_NUL),
    "type missing": (lambda e: changed(e, ["type"], ...), "type is not a non-empty string"),
    "type a list": (
        lambda e: changed(e, ["type"], ["invoice.paid"]),
        "type is not a non-empty string",
    ),
    "type over the column length": (
        lambda e: changed(e, ["type"], "invoice." + "x" * 93),
        "type is longer than 100 characters",
    ),
    "type with a NUL": (
        lambda e: changed(e, ["type"], "invoice.paid\x00"),
        "type holds a NUL or an unpaired surrogate",
    ),
    "created missing": (lambda e: changed(e, ["created"], ...), CREATED),
    "created a string": (lambda e: changed(e, ["created"], str(e["created"])), CREATED),
    "created a float": (lambda e: changed(e, ["created"], e["created"] + 0.5), CREATED),
    "created true": (lambda e: changed(e, ["created"], True), CREATED),
    "created null": (lambda e: changed(e, ["created"], None), CREATED),
    "created negative": (lambda e: changed(e, ["created"], -1), WHEN),
    "created huge": (lambda e: changed(e, ["created"], 10**20), WHEN),
    "created a day ahead": (lambda e: changed(e, ["created"], int(time.time()) + 86_400), WHEN),
    "livemode a string": (
        lambda e: changed(e, ["livemode"], "false"),
        "livemode is not true or false",
    ),
    "data missing": (lambda e: changed(e, ["data"], ...), DATA),
    "data a string": (lambda e: changed(e, ["data"], "invoice"), DATA),
    "data a list": (lambda e: changed(e, ["data"], [e["data"]]), DATA),
    "data.object missing": (lambda e: changed(e, ["data", "object"], ...), DATA),
    "data.object a list": (lambda e: changed(e, ["data", "object"], [e["data"]["object"]]), DATA),
    "data.object a string": (lambda e: changed(e, ["data", "object"], "in_123"), DATA),
}


@pytest.mark.parametrize("shape", list(BODIES))
def test_a_signed_envelope_not_understood_is_refused_and_changes_nothing(
    open_invoice, paid_event, fake_stripe, client, shape
):
    build, message = BODIES[shape]
    body = build(paid_event)
    before = books(open_invoice)

    for _ in range(2):  # and Stripe's retry gets the same answer
        response = post(client, fake_stripe, body)
        assert response.status_code == 400, response.content
        assert response["Content-Type"] == "application/json"
        [error] = response.json()["errors"]
        assert (error["index"], error["field"]) == (None, None)
        assert error["message"].startswith(f"invalid webhook: {message}"), error["message"]

    assert books(open_invoice) == before
    assert StripeWebhookEvent.objects.count() == 0


@pytest.mark.parametrize(
    "header",
    ["t=1,v1=\u00e9", "\u00e9", f"t={'9' * 5000},v1=abc", "t=,v1=", "v1=abc", "t=1", ","],
)
def test_a_malformed_signature_header_is_refused(
    open_invoice, paid_event, fake_stripe, client, header
):
    before = books(open_invoice)
    response = post(client, fake_stripe, json.dumps(paid_event).encode(), signature=header)
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["message"].startswith("invalid webhook: ")
    assert books(open_invoice) == before


@pytest.mark.parametrize("character", ["\x00", "\ud83d"], ids=["NUL", "unpaired surrogate"])
def test_unstorable_characters_inside_the_object_are_replaced_and_the_event_applied(
    open_invoice, paid_event, fake_stripe, client, character
):
    paid_event["data"]["object"]["description"] = f"Usage{character} fees"
    paid_event["data"]["object"]["metadata"][f"note{character}"] = character
    body = json.dumps(paid_event).encode()

    response = post(client, fake_stripe, body)

    assert response.status_code == 200
    assert response.json() == {
        "received": paid_event["id"],
        "duplicate": False,
        "outcome": "applied",
    }
    row = StripeWebhookEvent.objects.get()
    stored = row.payload["data"]["object"]
    assert stored["description"] == "Usage\ufffd fees"
    assert stored["metadata"]["note\ufffd"] == "\ufffd"
    assert stored["metadata"]["invoice_id"] == str(open_invoice.pk)
    assert row.detail == REPLACED
    assert (row.stripe_object_id, row.invoice_id) == (
        open_invoice.stripe_invoice_id,
        open_invoice.pk,
    )
    open_invoice.refresh_from_db()
    assert open_invoice.status == "paid"

    before = books(open_invoice)
    again = post(client, fake_stripe, body)  # Stripe's retry: a duplicate, nothing changes
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert books(open_invoice) == before


METADATA = "invoice not understood: its metadata is not an object"
ID = "invoice not understood: its id is not a Stripe id"
STATUS = "invoice not understood: its status is none of Stripe's invoice statuses"
NOT_OURS = "not one of our invoices"
# shape -> (the key path changed in the invoice's snapshot, its new value (... removes it),
# the stored row's detail)
OBJECTS = {
    "metadata a list": (["metadata"], ["invoice_id"], METADATA),
    "metadata a string": (["metadata"], "invoice_id=1", METADATA),
    "id over the column length": (["id"], "in_" + "x" * 253, ID),
    "id a number": (["id"], 42, ID),
    "id missing": (["id"], ..., ID),
    "status unknown and long": (["status"], "paid_" + "x" * 40, STATUS),
    "status a list": (["status"], ["paid"], STATUS),
    "status missing": (["status"], ..., STATUS),
    "our id beyond 64 bits": (["metadata", "invoice_id"], "9" * 30, NOT_OURS),
    "our id of 5000 digits": (["metadata", "invoice_id"], "9" * 5000, NOT_OURS),
    "our id a number beyond 64 bits": (["metadata", "invoice_id"], 2**70, NOT_OURS),
}


@pytest.mark.parametrize("shape", list(OBJECTS))
def test_an_invoice_object_not_understood_is_stored_acknowledged_and_changes_nothing_else(
    open_invoice, paid_event, fake_stripe, client, shape
):
    path, value, detail = OBJECTS[shape]
    body = changed(paid_event, ["data", "object", *path], value)
    before = books(open_invoice)

    response = post(client, fake_stripe, body)

    assert response.status_code == 200
    assert response.json() == {
        "received": paid_event["id"],
        "duplicate": False,
        "outcome": "ignored",
    }
    row = StripeWebhookEvent.objects.get()
    assert (row.event_id, row.type, row.outcome, row.detail, row.invoice_id) == (
        paid_event["id"],
        "invoice.paid",
        "ignored",
        detail,
        None,
    )
    assert int(row.created.timestamp()) == paid_event["created"]
    assert row.payload == json.loads(body)
    expected_object_id = json.loads(body)["data"]["object"].get("id")
    if not isinstance(expected_object_id, str) or len(expected_object_id) > 255:
        expected_object_id = ""
    assert row.stripe_object_id == expected_object_id
    assert books(open_invoice) == (*before[:-1], [paid_event["id"]])

    again = post(client, fake_stripe, body)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert StripeWebhookEvent.objects.count() == 1


def test_attempt_count_of_another_shape_is_not_copied_to_the_audit(
    open_invoice, fake_stripe, client
):
    snapshot = fake_stripe.invoices[open_invoice.stripe_invoice_id] | {"attempt_count": {"n": 1}}
    event = fake_stripe.event("invoice.payment_failed", fake_stripe._invoice_view(snapshot))

    response = post(client, fake_stripe, json.dumps(event).encode())

    assert response.status_code == 200 and response.json()["outcome"] == "unchanged"
    trail = AuditEntry.objects.get(action="invoice.stripe_event")
    assert (trail.data["type"], trail.data["attempt_count"]) == ("invoice.payment_failed", None)


def test_another_event_type_with_any_object_is_stored_and_acknowledged(fake_stripe, client):
    event = fake_stripe.event(
        "product.updated",
        {"id": "cus_x", "object": "customer", "metadata": ["a"], "name\x00": {"deep": "\x00"}},
    )
    response = post(client, fake_stripe, json.dumps(event).encode())
    assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    row = StripeWebhookEvent.objects.get()
    assert row.detail == f"event type not handled; {REPLACED}"
    assert row.payload["data"]["object"]["name\ufffd"] == {"deep": "\ufffd"}
    assert (row.stripe_object_id, row.livemode) == ("cus_x", False)
