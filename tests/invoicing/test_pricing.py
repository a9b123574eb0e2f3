"""The pricing record of a line (`PricingRecord`) and the one description of it
(`describe_price`): the stored JSON unchanged and read back from every shape, and the same
line worded identically by the invoice document, the summary e-mail and the portal."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.test import Client
from django.utils.html import escape
from hypothesis import given, settings
from hypothesis import strategies as st

from invoicing.documents import invoice_document_context, render_invoice_document
from invoicing.models import Invoice
from invoicing.pricing import PricedPortion, PricingRecord, describe_price
from invoicing.rating import PriceSpec, RatedLine, Tier, rate_line
from invoicing.services import closing, plans, subscriptions
from notifications import services as notification_services
from notifications.models import Notification
from tests.invoicing.conftest import T0
from tests.invoicing.test_rating import ALL_MODELS, price_specs, quantities
from tests.portal.conftest import make_portal_customer

D = Decimal
H = timedelta(hours=1)
M = timedelta(minutes=1)


def legacy_pricing_json(spec: PriceSpec | None, rated: RatedLine | None) -> dict[str, Any]:
    """What the close stored before the record existed (`describe_pricing`, verbatim): the
    record must write exactly this, so stored rows need no migration."""
    if spec is None or rated is None:
        return {"model": None}
    return {
        "model": spec.model,
        "included_quantity": str(spec.included_quantity),
        "minimum_minor": spec.minimum_minor,
        "unit_amount_minor": (
            None if spec.unit_amount_minor is None else str(spec.unit_amount_minor)
        ),
        "package_size": None if spec.package_size is None else str(spec.package_size),
        "package_amount_minor": spec.package_amount_minor,
        "billable_quantity": str(rated.billable_quantity),
        "minimum_applied": rated.minimum_applied,
        "portions": [
            {
                "tier": None if p.tier_index is None else p.tier_index + 1,
                "quantity": str(p.quantity),
                "unit_amount_minor": str(p.unit_amount_minor),
                "flat_amount_minor": p.flat_amount_minor,
                "packages": p.packages,
            }
            for p in rated.portions
        ],
    }


# --- The stored form ------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    spec=price_specs(ALL_MODELS),
    quantity=quantities,
    currency=st.sampled_from(["USD", "JPY", "KWD"]),
)
def test_the_stored_json_is_unchanged_and_reads_back(
    spec: PriceSpec, quantity: Decimal, currency: str
) -> None:
    rated = rate_line(spec, quantity)
    record = PricingRecord.from_rating(spec, rated)

    stored = json.loads(json.dumps(record.to_json()))  # through the JSON column

    assert stored == legacy_pricing_json(spec, rated)
    assert PricingRecord.from_json(stored) == record
    assert describe_price(
        PricingRecord.from_json(stored), kind="usage", unit="token", currency=currency
    ) == describe_price(record, kind="usage", unit="token", currency=currency)


def test_the_shapes_stored_so_far_read_back():
    # a line of an unpriced meter, and the field's default (lines written by hand)
    assert PricingRecord.from_json({"model": None}) == PricingRecord()
    assert PricingRecord.from_json({}) == PricingRecord()
    assert PricingRecord.from_json(None) == PricingRecord()
    assert PricingRecord().to_json() == {"model": None}
    # cap credits, with and without what the usage came to
    credit = PricingRecord.from_json({"cap_minor": 2000, "uncapped_minor": 2915})
    assert credit == PricingRecord(cap_minor=2000, uncapped_minor=2915)
    assert credit.to_json() == {"cap_minor": 2000, "uncapped_minor": 2915}
    assert PricingRecord.from_json({"cap_minor": 100}) == PricingRecord(cap_minor=100)
    assert PricingRecord.cap_credit(cap_minor=100, uncapped_minor=150).to_json() == {
        "cap_minor": 100,
        "uncapped_minor": 150,
    }
    # a rated line, with numbers as JSON numbers where strings are written
    assert PricingRecord.from_json(
        {
            "model": "volume",
            "included_quantity": 0,
            "minimum_minor": "0",
            "unit_amount_minor": None,
            "package_size": None,
            "package_amount_minor": None,
            "billable_quantity": "1500000.5",
            "minimum_applied": False,
            "portions": [
                {
                    "tier": 2,
                    "quantity": "1500000.5",
                    "unit_amount_minor": "0.0016",
                    "flat_amount_minor": 100,
                    "packages": None,
                }
            ],
        }
    ) == PricingRecord(
        model="volume",
        billable_quantity=D("1500000.5"),
        portions=(PricedPortion(2, D("1500000.5"), D("0.0016"), 100, None),),
    )
    # a partial row (as tests/invoicing/test_closing_batches.py writes one)
    assert PricingRecord.from_json({"portions": [{"quantity": "1"}]}) == PricingRecord(
        portions=(PricedPortion(None, D("1"), D("0")),)
    )


def test_dimensions_and_the_matched_rule_are_written_only_when_a_line_has_them():
    spec = PriceSpec(model="per_unit", unit_amount_minor=D("0.0015"))
    plain = PricingRecord.from_rating(spec, rate_line(spec, D("10")))
    assert "dimensions" not in plain.to_json() and "rule" not in plain.to_json()
    assert (plain.dimensions, plain.rule) == ((), None)

    priced = PricingRecord(
        model="per_unit",
        unit_amount_minor=D("0.0015"),
        dimensions=(("model", "large"), ("token_type", None)),
        rule=(("model", "large"),),
    )
    stored = priced.to_json()
    assert (stored["dimensions"], stored["rule"]) == (
        {"model": "large", "token_type": None},
        {"match": {"model": "large"}},
    )
    assert PricingRecord.from_json(json.loads(json.dumps(stored))) == priced
    catch_all = PricingRecord(model="per_unit", unit_amount_minor=D("1"), rule=(), rule_position=4)
    assert catch_all.to_json()["rule"] == {"match": {}, "position": 4}
    assert PricingRecord.from_json(catch_all.to_json()) == catch_all


# --- The description ------------------------------------------------------------------------


def _described(spec: PriceSpec, quantity: str, *, unit: str, currency: str, kind="usage"):
    record = PricingRecord.from_rating(spec, rate_line(spec, D(quantity)))
    return describe_price(record, kind=kind, unit=unit, currency=currency)


def test_a_price_is_described_in_the_currencys_terms():
    tokens = PriceSpec(
        model="per_unit", unit_amount_minor=D("0.002"), included_quantity=D("100000")
    )
    assert _described(tokens, "1500000.5", unit="token", currency="USD") == (
        "$0.00002 per token; first 100,000 tokens included"
    )
    # nothing billable yet: the price is still said
    assert _described(tokens, "0", unit="token", currency="USD") == (
        "$0.00002 per token; first 100,000 tokens included"
    )
    tiers = PriceSpec(
        model="graduated", tiers=(Tier(D("1000"), D("5")), Tier(None, D("2"), flat_amount_minor=1))
    )
    assert _described(tiers, "0", unit="task", currency="JPY") == "Graduated tiers"
    assert _described(tiers, "1", unit="task", currency="JPY") == (
        "Graduated tiers: 1 task at ¥5 (tier 1)"
    )
    package = PriceSpec(
        model="package", package_size=D("1"), package_amount_minor=150, minimum_minor=500
    )
    assert _described(package, "0.5", unit="minute", currency="KWD") == (
        "KD 0.150 per 1 minute, rounded up: 1 package; minimum KD 0.500 applied"
    )
    assert _described(package, "4", unit="minute", currency="KWD") == (
        "KD 0.150 per 1 minute, rounded up: 4 packages; minimum KD 0.500"
    )
    assert _described(tokens, "1", unit="", currency="USD") == (
        "$0.00002 per unit; first 100,000 included"
    )
    assert describe_price(PricingRecord(), kind="usage", unit="task", currency="USD") == (
        "Not priced"
    )
    assert describe_price(
        PricingRecord(cap_minor=100), kind="cap_credit", unit="", currency="JPY"
    ) == ("Budget cap ¥100")
    assert _described(tokens, "1", unit="token", currency="USD", kind="adjustment") == (
        "$0.00002 per token; first 100,000 tokens included; rated on the new total of the "
        "period, less what was billed for it before"
    )


# --- The same line, said the same way everywhere --------------------------------------------


@dataclass(frozen=True)
class Case:
    meter: str
    spec: PriceSpec
    quantity: str  # one event in the first hour
    cap_minor: int | None = None  # a budget cap (alert) set before the usage
    late_quantity: str | None = None  # an event of the first hour arriving after its close


CASES = {
    # a per-token price with 12 decimal places
    "per_unit": Case(
        "llm_tokens", PriceSpec("per_unit", unit_amount_minor=D("0.002000000001")), "1500000.5"
    ),
    "graduated": Case(
        "llm_tokens",
        PriceSpec(
            "graduated",
            tiers=(Tier(D("1000000"), D("0.002")), Tier(None, D("0.000000000001"), 100)),
        ),
        "1500000.5",
    ),
    "volume": Case(
        "llm_tokens",
        PriceSpec("volume", tiers=(Tier(D("1000000"), D("0.002")), Tier(None, D("0.0016"), 100))),
        "1500000.5",
    ),
    "package": Case(
        "agent_minutes",
        PriceSpec("package", package_size=D("60"), package_amount_minor=150),
        "61",
    ),
    "included": Case(
        "llm_tokens",
        PriceSpec("per_unit", unit_amount_minor=D("0.002"), included_quantity=D("100000")),
        "1500000.5",
    ),
    "minimum": Case(
        "agent_minutes",
        PriceSpec("per_unit", unit_amount_minor=D("5"), minimum_minor=500),
        "3",
    ),
    "cap_credit": Case(
        "llm_tokens",
        PriceSpec("per_unit", unit_amount_minor=D("0.002")),
        "1500000.5",
        cap_minor=1000,
    ),
    "adjustment": Case(
        "llm_tokens",
        PriceSpec(
            "graduated",
            included_quantity=D("100000"),
            tiers=(Tier(D("1000000"), D("0.002")), Tier(None, D("0.001"))),
        ),
        "900000",
        late_quantity="200000.5",
    ),
}

ADJUSTED = "rated on the new total of the period, less what was billed for it before"
# (currency, case) -> (line kind, amount, description) of each line of the invoice that bills
# the case's first hour (for "adjustment": the invoice after, whose second line is the late usage).
EXPECTED: dict[tuple[str, str], list[tuple[str, int, str]]] = {
    # 1,500,000.5 x 0.002000000001 = 3000.0010015000005
    ("USD", "per_unit"): [("usage", 3000, "$0.00002000000001 per token")],
    ("JPY", "per_unit"): [("usage", 3000, "¥0.002000000001 per token")],
    ("KWD", "per_unit"): [("usage", 3000, "KD 0.000002000000001 per token")],
    # 1,000,000 x 0.002 + 500,000.5 x 0.000000000001 + 100 flat = 2100.0000005000005
    ("USD", "graduated"): [
        (
            "usage",
            2100,
            "Graduated tiers: 1,000,000 tokens at $0.00002 (tier 1), 500,000.5 tokens at "
            "$0.00000000000001 plus $1.00 flat (tier 2)",
        )
    ],
    ("JPY", "graduated"): [
        (
            "usage",
            2100,
            "Graduated tiers: 1,000,000 tokens at ¥0.002 (tier 1), 500,000.5 tokens at "
            "¥0.000000000001 plus ¥100 flat (tier 2)",
        )
    ],
    ("KWD", "graduated"): [
        (
            "usage",
            2100,
            "Graduated tiers: 1,000,000 tokens at KD 0.000002 (tier 1), 500,000.5 tokens at "
            "KD 0.000000000000001 plus KD 0.100 flat (tier 2)",
        )
    ],
    # all of it in tier 2: 1,500,000.5 x 0.0016 + 100 = 2500.0008
    ("USD", "volume"): [
        ("usage", 2500, "Volume tiers: 1,500,000.5 tokens at $0.000016 plus $1.00 flat (tier 2)")
    ],
    ("JPY", "volume"): [
        ("usage", 2500, "Volume tiers: 1,500,000.5 tokens at ¥0.0016 plus ¥100 flat (tier 2)")
    ],
    ("KWD", "volume"): [
        (
            "usage",
            2500,
            "Volume tiers: 1,500,000.5 tokens at KD 0.0000016 plus KD 0.100 flat (tier 2)",
        )
    ],
    # 61 minutes: two started packages of 60
    ("USD", "package"): [("usage", 300, "$1.50 per 60 minutes, rounded up: 2 packages")],
    ("JPY", "package"): [("usage", 300, "¥150 per 60 minutes, rounded up: 2 packages")],
    ("KWD", "package"): [("usage", 300, "KD 0.150 per 60 minutes, rounded up: 2 packages")],
    # 1,400,000.5 billable x 0.002 = 2800.001
    ("USD", "included"): [("usage", 2800, "$0.00002 per token; first 100,000 tokens included")],
    ("JPY", "included"): [("usage", 2800, "¥0.002 per token; first 100,000 tokens included")],
    ("KWD", "included"): [("usage", 2800, "KD 0.000002 per token; first 100,000 tokens included")],
    # 3 x 5 = 15, raised to 500
    ("USD", "minimum"): [("usage", 500, "$0.05 per minute; minimum $5.00 applied")],
    ("JPY", "minimum"): [("usage", 500, "¥5 per minute; minimum ¥500 applied")],
    ("KWD", "minimum"): [("usage", 500, "KD 0.005 per minute; minimum KD 0.500 applied")],
    # 3000 of usage under a cap of 1000
    ("USD", "cap_credit"): [
        ("usage", 3000, "$0.00002 per token"),
        ("cap_credit", -2000, "Budget cap $10.00; usage rated at $30.00 before the cap"),
    ],
    ("JPY", "cap_credit"): [
        ("usage", 3000, "¥0.002 per token"),
        ("cap_credit", -2000, "Budget cap ¥1,000; usage rated at ¥3,000 before the cap"),
    ],
    ("KWD", "cap_credit"): [
        ("usage", 3000, "KD 0.000002 per token"),
        ("cap_credit", -2000, "Budget cap KD 1.000; usage rated at KD 3.000 before the cap"),
    ],
    # 800,000 billable first (1600); with the late 200,000.5: 1,000,000 x 0.002 + 0.5 x 0.001
    # = 2000.0005 -> 2000, so the adjustment is 400; the second hour has no usage
    **{
        (currency, "adjustment"): [
            ("usage", 0, "Graduated tiers; first 100,000 tokens included"),
            (
                "adjustment",
                400,
                f"Graduated tiers: 1,000,000 tokens at {tier_1} (tier 1), 0.5 tokens at "
                f"{tier_2} (tier 2); first 100,000 tokens included; {ADJUSTED}",
            ),
        ]
        for currency, tier_1, tier_2 in (
            ("USD", "$0.00002", "$0.00001"),
            ("JPY", "¥0.002", "¥0.001"),
            ("KWD", "KD 0.000002", "KD 0.000001"),
        )
    },
}


@pytest.fixture
def service_key_text(service_key) -> str:
    return service_key[1]


def _post(client: Client, key: str, method: str, path: str, body: dict) -> dict:
    response = getattr(client, method)(
        path, json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
    )
    assert response.status_code in (200, 201, 202), response.content
    return response.json()


def _event(event_id: str, meter: str, quantity: str, minutes: int) -> dict:
    return {
        "event_id": event_id,
        "customer_id": "acme",
        "meter": meter,
        "quantity": quantity,
        "timestamp": (T0 + minutes * M).isoformat(),
    }


@pytest.mark.django_db
@pytest.mark.parametrize("currency", ["USD", "JPY", "KWD"])
@pytest.mark.parametrize("case_name", list(CASES))
def test_the_same_line_is_described_identically_in_document_email_and_portal(
    case_name,
    currency,
    meters,
    service_key_text,
    settings,
    django_capture_on_commit_callbacks,
    mailoutbox,
):
    settings.BILLING_GRACE_PERIOD = 600
    case = CASES[case_name]
    portal = make_portal_customer("acme", currency=currency)
    plan = plans.create_plan_version(
        code="one",
        name="One price",
        currency=currency,
        interval="hour",
        prices=[plans.PriceInput(case.meter, case.spec)],
    )
    subscriptions.subscribe_customer(customer=portal.customer, plan=plan, now=T0)
    api = Client()
    browser = Client()
    browser.force_login(portal.user)

    with time_machine.travel(T0 + 30 * M, tick=False) as clock:
        if case.cap_minor is not None:
            _post(
                api,
                service_key_text,
                "put",
                "/api/v1/customers/acme/budget",
                {"cap_minor": case.cap_minor, "thresholds": [100], "action": "alert"},
            )
        _post(
            api,
            service_key_text,
            "post",
            "/api/v1/events",
            _event("e1", case.meter, case.quantity, 5),
        )
        # the portal's dashboard, while the hour runs: the usage line as the close will bill it
        dashboard = browser.get("/portal/")
        shown = [item["basis"] for item in dashboard.context["lines"]]

        clock.move_to(T0 + H + 10 * M)
        closing.close_due_periods(now=T0 + H + 10 * M)
        first = Invoice.objects.get(period__start=T0)
        invoice = first
        if case.late_quantity is not None:
            clock.move_to(T0 + H + 20 * M)
            _post(
                api,
                service_key_text,
                "post",
                "/api/v1/events",
                _event("late", case.meter, case.late_quantity, 50),
            )
            clock.move_to(T0 + 2 * H + 10 * M)
            closing.close_due_periods(now=T0 + 2 * H + 10 * M)
            invoice = Invoice.objects.get(period__start=T0 + H)

        # the invoice document (the admin's page, and the portal's print view)
        lines = invoice_document_context(invoice)["lines"]
        document = [line.price for line in lines]
        html = " ".join(render_invoice_document(invoice).split())
        for price in document:
            assert f'<td class="pricing">{escape(price)}</td>' in html
        printed = browser.get(f"/portal/invoices/{invoice.pk}/document/")
        assert printed.status_code == 200
        assert " ".join(printed.content.decode().split()) == html
        # the portal's invoice page
        page = browser.get(f"/portal/invoices/{invoice.pk}/")
        assert page.status_code == 200
        assert [line.price for line in page.context["lines"]] == document
        for price in document:
            assert f'<td class="small">{escape(price)}</td>' in page.content.decode()
        # the summary e-mail, as sent
        with django_capture_on_commit_callbacks(execute=True):
            notification_services.queue_usage_summaries()
        first_document = invoice_document_context(first)["lines"]

    summary = Notification.objects.get(kind=Notification.Kind.USAGE_SUMMARY, invoice_id=invoice.pk)
    emailed = [line["pricing"] for line in summary.context["lines"]]
    (message,) = [
        m
        for m in mailoutbox
        if m.subject.startswith("Your usage") and f"/portal/invoices/{invoice.pk}/" in m.body
    ]
    texts = [line for line in message.body.splitlines() if line.startswith("- ")]
    html_mail = message.alternatives[0][0]

    expected = EXPECTED[(currency, case_name)]
    amounts = dict(invoice.lines.values_list("position", "amount_minor"))
    assert [(line.kind, amounts[line.position], line.price) for line in lines] == expected
    assert emailed == document
    for text, line in zip(texts, lines, strict=True):
        assert text.endswith(f" ({line.price}) = {line.amount}")
    for price in document:
        assert f'<td style="padding:6px;">{escape(price)}</td>' in html_mail
    # the dashboard, while the first hour ran, worded its usage line as the invoice does
    assert shown == [line.price for line in first_document if line.kind == "usage"]
    if case.late_quantity is None:
        assert shown == [expected[0][2]]
