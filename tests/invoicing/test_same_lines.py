"""The same lines everywhere (issue 16 item 4): for a rate card, the usage API, the portal
dashboard, the invoice API, the usage-summary e-mail and the invoice document show the same
per-dimension lines with the same amounts, all from the one rating (pricing.usage_line)."""

from __future__ import annotations

import html as html_lib
import re
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.contrib.auth.models import User
from django.test import Client, override_settings

from invoicing.demo import DEMO_PLAN_PRICES
from invoicing.documents import render_invoice_document
from invoicing.models import Invoice, InvoiceLine
from invoicing.pricing import describe_line_price
from invoicing.services import closing, plans, subscriptions
from metering.currencies import format_minor
from metering.models import PortalMembership
from metering.units import format_quantity
from notifications.services import queue_usage_summaries, send_usage_summaries_now
from tests.invoicing.conftest import T0
from tests.invoicing.test_closing import ev

pytestmark = pytest.mark.django_db
D = Decimal
H = timedelta(hours=1)
AT = T0 + timedelta(minutes=5)

# The demo's rate card: large and small priced per token type, medium unpriced.
STREAM = [
    ev("li", "llm_tokens", 2_000_000, AT, model="large", token_type="input"),  # 0.002: 4,000
    ev("lo", "llm_tokens", 500_000, AT, model="large", token_type="output"),  # 0.006: 3,000
    ev("si", "llm_tokens", 1_100_000, AT, model="small", token_type="input"),  # graduated: 200
    ev("so", "llm_tokens", 1_000_000, AT, model="small", token_type="output"),  # 0.0008: 800
    ev("mi", "llm_tokens", 300_000, AT, model="medium", token_type="input"),  # unpriced
    ev("t1", "agent_tasks", None, AT),  # an ordinary price: 5
]
EXPECTED = [  # (dimensions, quantity, amount_minor, kind) in the invoice's order
    (None, D(0), 500, "usage"),  # agent minutes: none, the package price's minimum
    (None, D(1), 5, "usage"),
    ({"model": "large", "token_type": "input"}, D(2_000_000), 4000, "usage"),
    ({"model": "large", "token_type": "output"}, D(500_000), 3000, "usage"),
    ({"model": "medium", "token_type": "input"}, D(300_000), 0, "unpriced"),
    ({"model": "small", "token_type": "input"}, D(1_100_000), 200, "usage"),
    ({"model": "small", "token_type": "output"}, D(1_000_000), 800, "usage"),
]


def _text(html: str) -> str:
    """A page's text, tags dropped and whitespace collapsed."""
    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", html)).split())


@override_settings(BILLING_GRACE_PERIOD=600, BILLING_REVIEW_PERIOD=1800)
def test_api_portal_email_and_document_show_the_same_per_dimension_lines(
    meters, customer, record, api, mailoutbox
):
    plan = plans.create_plan_version(
        code="demo", name="Demo", currency="USD", interval="hour", prices=DEMO_PLAN_PRICES
    )
    subscriptions.subscribe_customer(customer=customer, plan=plan, now=T0)
    user = User.objects.create_user("acme-user", email="ops@acme.example", password="x")
    PortalMembership.objects.create(user=user, customer=customer)
    portal = Client()
    portal.force_login(user)
    record(STREAM, now=AT + timedelta(minutes=1))

    # During the period: the usage API and the portal dashboard.
    with time_machine.travel(T0 + timedelta(minutes=30), tick=False):
        usage = api.get("/api/v1/customers/acme/usage").json()
        dashboard = portal.get("/portal/")
    assert dashboard.status_code == 200
    from_usage = [
        (line.get("dimensions"), D(line["quantity"]), line["amount_minor"])
        for line in usage["lines"]
    ]
    assert from_usage == [(dims, quantity, amount) for dims, quantity, amount, _ in EXPECTED]
    page = dashboard.content.decode()
    rows = re.findall(
        r'<tr data-meter="([^"]+)" data-quantity="([^"]+)" data-amount-minor="(\d+)"'
        r'(?: data-group="([^"]*)")?',
        page,
    )
    assert [(D(q), int(a)) for _, q, a, _ in rows] == [(q, a) for _, q, a in from_usage]
    assert [meter for meter, *_ in rows] == [line["meter"] for line in usage["lines"]]
    groups = [group for *_, group in rows]
    # Rate card groups come under their meter's heading, named by their values.
    heading = re.search(
        r'<tr class="meter-heading" data-meter-heading="llm_tokens" '
        r'data-amount-minor="(\d+)">',
        page,
    )
    assert heading is not None and int(heading.group(1)) == 4000 + 3000 + 200 + 800
    assert page.index("data-meter-heading") < page.index('data-group="model=large')

    # The close: the invoice API has the same lines, from the same rating.
    closing.close_due_periods(now=T0 + H + timedelta(minutes=10))
    invoice = Invoice.objects.get(customer=customer)
    listed = api.get("/api/v1/customers/acme/invoices").json()[0]["lines"]
    assert [
        (line.get("dimensions"), D(line["quantity"]), line["amount_minor"], line["kind"])
        for line in listed
    ] == EXPECTED
    assert [
        line["description"].split(" — ", 1)[1] if " — " in line["description"] else ""
        for line in listed
    ] == groups
    assert invoice.total_minor == usage["total_minor"] == 500 + 5 + 4000 + 3000 + 200 + 800

    # The usage summary e-mail, as sent.
    queue_usage_summaries(invoice_ids=[invoice.pk], send_after_commit=False)
    send_usage_summaries_now(invoice_ids=[invoice.pk])
    assert len(mailoutbox) == 1
    body = mailoutbox[0].body
    document = _text(render_invoice_document(invoice))
    for line, stored in zip(listed, invoice.lines.order_by("position"), strict=True):
        amount = format_minor(line["amount_minor"], "USD")
        quantity = D(line["quantity"]).normalize()
        # the e-mail: "- LLM tokens — model=large, token_type=input: 2000000 token (...) = $40.00"
        pattern = rf"- {re.escape(line['description'])}: {quantity:f} \w+ \(.+\) = ".replace(
            " = ", rf" = {re.escape(amount)}\n"
        )
        assert re.search(pattern, body + "\n"), (line["description"], body)
        # the document: its row is the position, meter, description, quantity, price, amount
        price = describe_line_price(stored, currency="USD")
        quantity_text = format_quantity(stored.quantity, stored.meter.unit)
        label = "" if stored.kind == "usage" else f"{InvoiceLine.Kind(stored.kind).label} "
        row = (
            f"{stored.position} {stored.meter.code} {label}{line['description']} "
            f"{quantity_text} {price} {amount}"
        )
        assert row in document, (row, document)
        assert f"({price}) = {amount}" in body  # the e-mail words the price the same
    assert "Not priced" in body and "Not priced" in document
    assert format_minor(invoice.total_minor, "USD") in body
    assert format_minor(invoice.total_minor, "USD") in document
