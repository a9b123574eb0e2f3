"""The fake Stripe is as strict as Stripe documents: each rule here, through the real `stripe`
client, so the backend's tests could not pass against a fake more lenient than Stripe."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import stripe

from invoicing.stripe import client as our_client
from tests import stripe_schema
from tests.fake_stripe import API_VERSION, MAX_INVOICE_ITEMS

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def api(fake_stripe):
    return stripe.StripeClient(
        fake_stripe.api_key,
        base_addresses={"api": fake_stripe.url},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=0.5),
    ).v1


def error_of(call):
    with pytest.raises(stripe.StripeError) as caught:
        call()
    return caught.value


def test_the_schema_data_is_what_the_script_derives_from_the_pinned_library():
    done = subprocess.run(
        [sys.executable, "scripts/stripe_param_schema.py", "--check"], cwd=ROOT, check=False
    )
    assert done.returncode == 0
    data = stripe_schema.schema()
    assert data["api_version"] == API_VERSION == our_client.API_VERSION == stripe.api_version
    assert "POST /v1/invoices/{id}/pay" in data["operations"]


def test_unknown_parameters_and_wrong_types_get_stripes_400(api):
    unknown = error_of(lambda: api.customers.create(params={"nmae": "Acme"}))
    assert isinstance(unknown, stripe.InvalidRequestError) and unknown.http_status == 400
    assert (unknown.code, unknown.param) == ("parameter_unknown", "nmae")
    nested = error_of(
        lambda: api.invoice_items.create(
            params={"customer": "cus_x", "amount": 5, "currency": "usd", "period": {"begin": 1}}
        )
    )
    assert (nested.code, nested.param) == ("parameter_unknown", "period[begin]")
    wrong = error_of(
        lambda: api.invoices.list(params={"limit": "ten"})  # type: ignore[typeddict-item]
    )
    assert (wrong.code, wrong.param) == ("parameter_invalid_integer", "limit")
    enum = error_of(
        lambda: api.invoices.create(
            params={"customer": "cus_x", "collection_method": "by_post"}  # type: ignore[typeddict-item]
        )
    )
    assert enum.param == "collection_method" and "must be one of" in str(enum)
    missing = error_of(lambda: api.billing.meter_events.create(params={"event_name": "x"}))  # type: ignore[typeddict-item]
    assert (missing.code, missing.param) == ("parameter_missing", "payload")


def test_a_500_is_saved_under_its_key_and_replayed_other_parameters_are_refused(api, fake_stripe):
    fake_stripe.inject("500", path=r"/v1/customers")
    key = {"idempotency_key": "k-500"}
    first = error_of(lambda: api.customers.create(params={"name": "Acme"}, options=key))
    again = error_of(lambda: api.customers.create(params={"name": "Acme"}, options=key))
    assert first.http_status == again.http_status == 500  # replayed, for a day
    assert fake_stripe.customers == {}
    assert [r.replayed for r in fake_stripe.requests] == [False, True]
    other = error_of(lambda: api.customers.create(params={"name": "Other"}, options=key))
    assert isinstance(other, stripe.IdempotencyError) and other.http_status == 400
    # a refusal by validation is not saved: the key stays usable
    error_of(lambda: api.customers.create(params={"nmae": "x"}, options={"idempotency_key": "v"}))
    ok = api.customers.create(params={"name": "Valid"}, options={"idempotency_key": "v"})
    assert ok.name == "Valid"


def test_a_key_in_flight_is_a_409(api, fake_stripe):
    fake_stripe.inject("slow", path=r"/v1/customers", delay=1.5)
    key = {"idempotency_key": "k-slow"}
    first = error_of(lambda: api.customers.create(params={"name": "Acme"}, options=key))
    assert isinstance(first, stripe.APIConnectionError)  # our client gave up at 0.5 s
    conflict = error_of(lambda: api.customers.create(params={"name": "Acme"}, options=key))
    assert conflict.http_status == 409 and conflict.error.code == "idempotency_key_in_use"
    translated = our_client._translate(conflict)
    assert isinstance(translated, our_client.TransientStripeError) and not translated.saved
    deadline = time.monotonic() + 5
    while fake_stripe.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    replayed = api.customers.create(params={"name": "Acme"}, options=key)
    assert len(fake_stripe.customers) == 1 and replayed.id in fake_stripe.customers


def _invoice_with(api, fake, customer_id, amounts):
    invoice = api.invoices.create(
        params={"customer": customer_id, "auto_advance": False, "currency": "usd"}
    )
    for amount in amounts:
        api.invoice_items.create(
            params={
                "customer": customer_id,
                "invoice": invoice.id,
                "amount": amount,
                "currency": "usd",
            }
        )
    return invoice


def test_pay_needs_a_payment_method_and_a_decline_is_a_402(api, fake_stripe):
    customer = api.customers.create(params={"name": "Acme"})
    invoice = _invoice_with(api, fake_stripe, customer.id, [1000])
    api.invoices.finalize_invoice(invoice.id)
    refused = error_of(lambda: api.invoices.pay(invoice.id))
    assert refused.http_status == 400 and "no attached payment source" in str(refused)
    fake_stripe.attach_card(customer.id, number="4000000000000002")  # declines
    declined = error_of(lambda: api.invoices.pay(invoice.id))
    assert isinstance(declined, stripe.CardError) and declined.code == "card_declined"
    fake_stripe.declining_methods.clear()
    paid = api.invoices.pay(invoice.id)
    assert (paid.status, paid.amount_paid, paid.attempt_count) == ("paid", 1000, 2)


def test_below_the_minimum_charge_is_paid_with_nothing_and_carried_to_the_balance(api, fake_stripe):
    customer = api.customers.create(params={"name": "Acme"})
    small = api.invoices.finalize_invoice(_invoice_with(api, fake_stripe, customer.id, [30]).id)
    assert (small.status, small.amount_due, small.amount_paid, small.ending_balance) == (
        "paid",
        30,
        0,
        30,
    )
    assert fake_stripe.customers[customer.id]["balance"] == 30
    credit = api.invoices.finalize_invoice(
        _invoice_with(api, fake_stripe, customer.id, [100, -250]).id
    )
    # the 30 carried, then a credit of 150: nothing due, 120 owed to the customer
    assert (credit.status, credit.starting_balance, credit.amount_due) == ("paid", 30, 0)
    assert credit.ending_balance == -120 == fake_stripe.customers[customer.id]["balance"]
    big = api.invoices.finalize_invoice(_invoice_with(api, fake_stripe, customer.id, [1000]).id)
    assert (big.status, big.starting_balance, big.amount_due) == ("open", -120, 880)
    assert fake_stripe.customers[customer.id]["balance"] == 0


def test_an_invoice_holds_at_most_250_items(api, fake_stripe):
    customer = api.customers.create(params={"name": "Acme"})
    invoice = _invoice_with(api, fake_stripe, customer.id, [1] * MAX_INVOICE_ITEMS)
    refused = error_of(lambda: _invoice_item(api, customer.id, invoice.id))
    assert refused.http_status == 400 and "at most 250" in str(refused)


def _invoice_item(api, customer_id, invoice_id):
    return api.invoice_items.create(
        params={"customer": customer_id, "invoice": invoice_id, "amount": 1, "currency": "usd"}
    )


def test_meter_identifiers_are_kept_for_a_window_not_for_ever(api, fake_stripe):
    fake_stripe.create_meter("tokens")
    customer = api.customers.create(params={"name": "Acme"})
    event = {
        "event_name": "tokens",
        "identifier": "id-1",
        "payload": {"stripe_customer_id": customer.id, "value": "5"},
    }
    api.billing.meter_events.create(params=event)
    assert error_of(lambda: api.billing.meter_events.create(params=event)).http_status == 400
    fake_stripe.forget_idempotency_keys()  # a day later
    api.billing.meter_events.create(params=event)
    assert fake_stripe.meter_total("tokens", customer.id) == 10


def test_send_invoice_finalized_with_auto_advance_is_emailed_by_stripe_once(api, fake_stripe):
    customer = api.customers.create(params={"name": "Acme", "email": "a@example.com"})
    invoice = api.invoices.create(
        params={"customer": customer.id, "collection_method": "send_invoice", "days_until_due": 30}
    )
    api.invoice_items.create(
        params={"customer": customer.id, "invoice": invoice.id, "amount": 900, "currency": "usd"}
    )
    api.invoices.finalize_invoice(invoice.id, params={"auto_advance": True})
    assert fake_stripe.emails_sent == {invoice.id: 1}


def test_the_client_names_the_pinned_api_version(fake_stripe, settings):
    customer = fake_stripe.create_customer({"name": "Acme"})
    our_client.retrieve_customer(customer["id"])
    [request] = fake_stripe.requests
    assert request.stripe_version == our_client.API_VERSION


def test_parallel_requests_with_one_key_apply_once(api, fake_stripe):
    fake_stripe.inject("slow", path=r"/v1/customers", delay=0.3)
    results: list[object] = []

    def create():
        try:
            results.append(
                api.customers.create(params={"name": "A"}, options={"idempotency_key": "p"})
            )
        except stripe.StripeError as exc:
            results.append(exc)

    threads = [threading.Thread(target=create) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fake_stripe.customers) == 1
    conflicts = [r for r in results if isinstance(r, stripe.StripeError)]
    assert all(c.http_status == 409 for c in conflicts) and len(conflicts) == 2
