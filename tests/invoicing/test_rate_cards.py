"""Rate cards (DESIGN 4a): prices by event dimension, per-group aggregates and lines,
unpriced usage billed or waived by finance, and reconcile over all of it."""

from __future__ import annotations

import copy
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.test import override_settings

from audit.models import AuditEntry
from invoicing import selectors
from invoicing.models import Invoice, InvoiceLine, PricePlan, UnpricedResolution
from invoicing.pricing import rate_group
from invoicing.rate_cards import RateCard, Rule, match_rule
from invoicing.rating import PriceSpec, Tier
from invoicing.services import closing, plans, subscriptions, unpriced
from invoicing.services.reconcile import reconcile
from metering import aggregation
from metering.dimensions import value_text, values_of
from metering.models import UsageAggregate, UsageEvent
from tests.invoicing.conftest import T0
from tests.invoicing.test_closing import ev

pytestmark = pytest.mark.django_db
D = Decimal
H = timedelta(hours=1)
GRACE = {"BILLING_GRACE_PERIOD": 600, "BILLING_REVIEW_PERIOD": 1800}

# DESIGN 4a's example, verbatim.
RATE_CARD = {
    "meter": "llm_tokens",
    "dimensions": ["model", "token_type"],
    "rates": [
        {
            "match": {"model": "large", "token_type": "output"},
            "model": "per_unit",
            "unit_amount_minor": "0.0015",
        },
        {"match": {"model": "large"}, "model": "per_unit", "unit_amount_minor": "0.0005"},
        {
            "match": {"model": "small"},
            "model": "graduated",
            "included_quantity": "100000",
            "tiers": [
                {"up_to": "1000000", "unit_amount_minor": "0.0001"},
                {"up_to": None, "unit_amount_minor": "0.00005"},
            ],
        },
    ],
}


def rate_card_plan(*rate_cards: dict, interval: str = "hour") -> dict:
    return {
        "code": "agents",
        "name": "Agents",
        "currency": "USD",
        "interval": interval,
        "prices": [
            {"meter": "agent_tasks", "model": "per_unit", "unit_amount_minor": "5"},
            *(copy.deepcopy(card) for card in rate_cards or (RATE_CARD,)),
        ],
    }


def tokens(event_id, quantity, at=T0 + timedelta(minutes=5), **props):
    return ev(event_id, "llm_tokens", quantity, at, **props)


@pytest.fixture
def on_rate_card(api, meters, customer):
    response = api.post("/api/v1/plans", rate_card_plan(), format="json")
    assert response.status_code == 201, response.content
    plan = PricePlan.objects.get(code="agents")
    subscriptions.subscribe_customer(customer=customer, plan=plan, now=T0)
    return plan


# --- Matching ---------------------------------------------------------------------------------


def _card(*rules: tuple[dict, str]) -> RateCard:
    return RateCard(
        dimensions=("model", "token_type"),
        rules=tuple(
            Rule(match=tuple(match.items()), spec=PriceSpec("per_unit", D(unit)))
            for match, unit in rules
        ),
    )


def test_the_first_matching_rule_wins_and_the_catch_all_takes_the_rest():
    card = _card(
        ({"model": "large", "token_type": "output"}, "3"),
        ({"model": "large"}, "2"),
        ({}, "1"),
    )
    assert match_rule(card, ("large", "output"))[0] == 0
    assert match_rule(card, ("large", "input"))[0] == 1
    assert match_rule(card, ("large", None))[0] == 1
    assert match_rule(card, ("small", "output"))[0] == 2
    assert match_rule(card, (None, None))[0] == 2


def test_an_absent_value_matches_nothing_and_without_catch_all_is_unpriced():
    card = _card(({"model": "large"}, "2"), ({"token_type": "input"}, "1"))
    assert match_rule(card, (None, "output")) is None
    assert match_rule(card, (None, "input"))[0] == 1
    assert match_rule(card, ("LARGE", None)) is None  # exact text: case matters


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("large", "large"),
        (True, "true"),
        (False, "false"),
        (5, "5"),
        (-5, "-5"),
        (2.5, "2.5"),
        (None, None),
        ("", ""),
        ({"a": 1}, '{"a":1}'),
        ([1, "x"], '[1,"x"]'),
    ],
)
def test_property_values_compare_as_json_text(value, text):
    assert value_text(value) == text
    assert values_of({"model": value}, ["model", "token_type"]) == (text, None)


@pytest.mark.parametrize(
    ("value", "group"),
    [("large", "large"), (True, "true"), (False, "false"), (5, "5"), (2.5, "2.5"), (None, None)],
)
def test_the_database_groups_property_values_as_the_same_text(record, on_rate_card, value, group):
    record([tokens("v", 10, model=value, token_type="input")], now=T0 + timedelta(minutes=6))
    preview = selectors.preview_period_usage(
        period=selectors.period_for(customer=on_rate_card.subscriptions.get().customer, at=T0)
    )
    grouped = [line.dimensions for line in preview.lines if line.meter.code == "llm_tokens"]
    assert grouped == [{"model": group, "token_type": "input"}]


# --- Plans API ------------------------------------------------------------------------------


@pytest.mark.usefixtures("meters")
def test_a_rate_card_posts_and_reads_back_exactly(api):
    response = api.post("/api/v1/plans", rate_card_plan(), format="json")

    assert response.status_code == 201, response.content
    card = next(p for p in response.json()["prices"] if p["meter"] == "llm_tokens")
    assert card["dimensions"] == ["model", "token_type"]
    assert [rule["match"] for rule in card["rates"]] == [r["match"] for r in RATE_CARD["rates"]]
    assert card["rates"][0]["unit_amount_minor"] == "0.0015"
    assert card["rates"][2]["tiers"] == [
        {"up_to": "1000000", "unit_amount_minor": "0.0001", "flat_amount_minor": 0},
        {"up_to": None, "unit_amount_minor": "0.00005", "flat_amount_minor": 0},
    ]
    assert card["rates"][2]["included_quantity"] == "100000"
    assert "model" not in card


def _card_with(**changes) -> dict:
    card = copy.deepcopy(RATE_CARD)
    for path, value in changes.items():
        target = card
        *head, last = path.split("__")
        for part in head:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is ...:
            del target[int(last) if last.isdigit() else last]
        else:
            target[int(last) if last.isdigit() else last] = value
    return card


@pytest.mark.parametrize(
    ("card", "field", "message"),
    [
        (
            _card_with(rates__2__tiers__0__up_to="2000000", rates__2__tiers__1__up_to="1000"),
            "prices[1].rates[2].tiers[1].up_to",
            "must be empty: the last tier is open",
        ),
        (
            _card_with(rates__0__match={}),
            "prices[1].rates[0].match",
            "the catch-all {} may only be the last rule",
        ),
        (
            _card_with(rates__1__match={"size": "large"}),
            "prices[1].rates[1].match.size",
            "'size' is not one of the dimensions model, token_type",
        ),
        (
            _card_with(rates__1__match={"model": 5}),
            "prices[1].rates[1].match.model",
            "match values are strings",
        ),
        (
            _card_with(dimensions=["model", "model"]),
            "prices[1].dimensions[1]",
            "dimension 'model' is named twice",
        ),
        (
            _card_with(dimensions=["a", "b", "c", "d"]),
            "prices[1].dimensions",
            "give 1 to 3 property names",
        ),
        (_card_with(rates=[]), "prices[1].rates", "a price with dimensions needs"),
        (
            {**RATE_CARD, "model": "per_unit"},
            "prices[1].model",
            "a price with rates has no top-level price fields",
        ),
        (
            _card_with(rates__0__unit_amount_minor="-1"),
            "prices[1].rates[0].unit_amount_minor",
            "greater than or equal to 0",
        ),
        (
            _card_with(rates__0__model=...),
            "prices[1].rates[0].model",
            "This field is required.",
        ),
        (
            _card_with(rates__0__model="package"),
            "prices[1].rates[0].package_size",
            "package_size is required for the package model",
        ),
    ],
    ids=[
        "tier-bound",
        "catch-all-not-last",
        "match-key-not-a-dimension",
        "match-value-not-a-string",
        "dimension-twice",
        "four-dimensions",
        "no-rules",
        "top-level-model",
        "negative-unit-amount",
        "rule-without-model",
        "package-without-size",
    ],
)
@pytest.mark.usefixtures("meters")
def test_an_invalid_rate_card_is_422_at_the_fields_path_and_stores_nothing(
    api, card, field, message
):
    response = api.post("/api/v1/plans", rate_card_plan(card), format="json")

    assert response.status_code == 422, response.content
    errors = {e["field"]: e["message"] for e in response.json()["errors"]}
    assert field in errors, errors
    assert message in errors[field]
    assert not PricePlan.objects.exists()


# --- Closing per group ----------------------------------------------------------------------

MIXED = [
    tokens("lo", 1_000_000, model="large", token_type="output"),  # rule 1: 1,500
    tokens("li", 2_000_000, model="large", token_type="input"),  # rule 2: 1,000
    tokens("si", 1_100_000, model="small", token_type="input"),  # rule 3: 1,000,000 x 0.0001
    tokens("sx", 200_000, model="small"),  # rule 3, token_type absent: 100,000 x 0.0001
    tokens("hu", 500, model="huge", token_type="input"),  # unpriced
    tokens("bo", 7, model=True, token_type="input"),  # "true": unpriced
    tokens("na", 9, token_type="output"),  # model absent: unpriced
    ev("t1", "agent_tasks", None, T0 + timedelta(minutes=5)),
]


def _lines(invoice):
    return [
        (
            line.kind,
            line.meter.code,
            line.pricing.get("dimensions"),
            line.quantity,
            line.amount_minor,
        )
        for line in invoice.lines.order_by("position")
    ]


@override_settings(**GRACE)
def test_a_mixed_stream_closes_as_one_line_per_group(record, on_rate_card, api, customer):
    record(MIXED, now=T0 + timedelta(minutes=6))

    with time_machine.travel(T0 + timedelta(minutes=7), tick=False):
        usage = api.get("/api/v1/customers/acme/usage").json()
    closing.close_due_periods(now=T0 + H + timedelta(minutes=10))

    invoice = Invoice.objects.get(customer=customer)
    assert _lines(invoice) == [
        ("usage", "agent_tasks", None, D(1), 5),
        ("unpriced", "llm_tokens", {"model": "huge", "token_type": "input"}, D(500), 0),
        ("usage", "llm_tokens", {"model": "large", "token_type": "input"}, D(2_000_000), 1000),
        ("usage", "llm_tokens", {"model": "large", "token_type": "output"}, D(1_000_000), 1500),
        ("usage", "llm_tokens", {"model": "small", "token_type": "input"}, D(1_100_000), 100),
        ("usage", "llm_tokens", {"model": "small", "token_type": None}, D(200_000), 10),
        ("unpriced", "llm_tokens", {"model": "true", "token_type": "input"}, D(7), 0),
        ("unpriced", "llm_tokens", {"model": None, "token_type": "output"}, D(9), 0),
    ]
    assert invoice.total_minor == 5 + 1000 + 1500 + 100 + 10
    # The usage API had the same lines, with their dimensions (none on the ordinary price).
    assert [(line.get("dimensions"), line["amount_minor"]) for line in usage["lines"]] == [
        (dims, amount) for _, _, dims, _, amount in _lines(invoice)
    ]
    assert "dimensions" not in usage["lines"][0]
    listed = api.get("/api/v1/customers/acme/invoices").json()[0]["lines"]
    assert [line.get("dimensions") for line in listed] == [d for _, _, d, _, _ in _lines(invoice)]
    assert listed[3]["description"].endswith("— model=large, token_type=output")
    assert listed[7]["description"].endswith("— model=(none), token_type=output")

    # Every event is in exactly one group; from each event its line, and back.
    for event in UsageEvent.objects.all():
        assert len(aggregation.aggregates_covering(event)) == 1
        line = selectors.line_for_event(event=event)
        assert line is not None
        assert event in selectors.events_for_line(line=line)
    for line in invoice.lines.all():
        assert selectors.events_for_line(line=line).count() == 1

    # Unpriced usage is a difference until finance decides.
    problems = reconcile()
    assert len(problems) == 3 and all("neither billed nor waived" in p for p in problems)


@override_settings(**GRACE)
def test_unpriced_usage_billed_then_waived_is_audited_and_reconciles(
    record, on_rate_card, customer, admin_user
):
    record(MIXED, now=T0 + timedelta(minutes=6))
    closing.close_due_periods(now=T0 + H + timedelta(minutes=10))
    huge, true, absent = InvoiceLine.objects.filter(kind="unpriced").order_by("position")

    billed = unpriced.bill_unpriced_line(line_id=huge.pk, rule_position=2, user=admin_user)
    again = unpriced.bill_unpriced_line(line_id=huge.pk, rule_position=2, user=admin_user)
    assert again.pk == billed.pk and billed.amount_minor == 0  # 500 x 0.0005 = 0.25 -> 0
    unpriced.bill_unpriced_line(line_id=true.pk, rule_position=1, user=admin_user)  # 7 x .0015
    with pytest.raises(unpriced.UnpricedActionInvalid):
        unpriced.waive_unpriced_line(line_id=absent.pk, reason="  ", user=admin_user)
    with pytest.raises(unpriced.UnpricedActionInvalid):
        unpriced.bill_unpriced_line(line_id=absent.pk, rule_position=4, user=admin_user)
    unpriced.waive_unpriced_line(line_id=absent.pk, reason="test traffic", user=admin_user)
    with pytest.raises(unpriced.UnpricedActionInvalid):
        unpriced.bill_unpriced_line(line_id=absent.pk, rule_position=1, user=admin_user)

    assert reconcile() == []
    entries = AuditEntry.objects.filter(action__startswith="unpriced.").order_by("pk")
    assert [(e.action, e.data["line_id"], e.actor_id) for e in entries] == [
        ("unpriced.billed", huge.pk, admin_user.pk),
        ("unpriced.billed", true.pk, admin_user.pk),
        ("unpriced.waived", absent.pk, admin_user.pk),
    ]
    assert entries[2].data["reason"] == "test traffic"

    # A large amount so the adjustment shows: bill the huge group at rule 1 on the next close.
    closing.close_due_periods(now=T0 + 2 * H + timedelta(minutes=10))
    closing.close_due_periods(now=T0 + 2 * H + timedelta(minutes=10))  # a rerun adds nothing
    second = Invoice.objects.get(customer=customer, period__start=T0 + H)
    adjustments = second.lines.filter(kind="adjustment").order_by("position")
    assert [(a.quantity, a.amount_minor, a.pricing["dimensions"]) for a in adjustments] == [
        (D(500), 0, {"model": "huge", "token_type": "input"}),
        (D(7), 0, {"model": "true", "token_type": "input"}),
    ]
    assert adjustments[1].pricing["rule"] == {
        "match": {"model": "large", "token_type": "output"},
        "position": 1,
    }
    assert UnpricedResolution.objects.get(line=huge).billed_line == adjustments[0]
    assert reconcile() == []


@override_settings(**GRACE)
def test_billed_unpriced_usage_is_charged_on_the_next_invoice(
    record, on_rate_card, customer, admin_user
):
    record([tokens("hu", 3_000_000, model="huge", token_type="output")], now=T0 + H / 4)
    closing.close_due_periods(now=T0 + H + timedelta(minutes=10))
    line = InvoiceLine.objects.get(kind="unpriced")

    unpriced.bill_unpriced_line(line_id=line.pk, rule_position=1, user=admin_user)
    closing.close_due_periods(now=T0 + 2 * H + timedelta(minutes=10))

    second = Invoice.objects.get(customer=customer, period__start=T0 + H)
    assert [(x.kind, x.amount_minor) for x in second.lines.exclude(meter__code="agent_tasks")] == [
        ("adjustment", 4500)  # 3,000,000 x 0.0015
    ]
    assert second.total_minor == 4500
    assert reconcile() == []


@override_settings(**GRACE)
def test_late_events_land_in_their_groups_adjustment_at_its_margin(record, on_rate_card, customer):
    record(
        [
            tokens("s1", 1_050_000, model="small", token_type="input"),
            tokens("l1", 1000, model="large", token_type="input"),
        ],
        now=T0 + H / 4,
    )
    closing.close_due_periods(now=T0 + H + timedelta(minutes=10))
    # Late: small/input goes from 1,050,000 (950,000 billable) into tier 2, and a new group.
    record(
        [
            tokens("s2", 100_000, model="small", token_type="input"),
            tokens("o1", 2000, model="large", token_type="output"),
        ],
        now=T0 + H + timedelta(minutes=20),
    )
    closing.close_due_periods(now=T0 + 2 * H + timedelta(minutes=10))

    second = Invoice.objects.get(customer=customer, period__start=T0 + H)
    late = second.lines.filter(kind="adjustment").order_by("position")
    # small/input: rate(1,150,000) - rate(1,050,000) = (100 + 2.5) - 95 = 7.5 -> 103 - 95 = 8
    assert [(x.pricing["dimensions"], x.quantity, x.amount_minor) for x in late] == [
        ({"model": "large", "token_type": "output"}, D(2000), 3),  # 2000 x 0.0015
        ({"model": "small", "token_type": "input"}, D(100_000), 8),
    ]
    groups = UsageAggregate.objects.filter(kind="adjustment").order_by("pk")
    assert [(g.dimensions, g.quantity, g.cumulative_quantity) for g in groups] == [
        ({"model": "large", "token_type": "output"}, D(2000), D(2000)),
        ({"model": "small", "token_type": "input"}, D(100_000), D(1_150_000)),
    ]
    assert reconcile() == []


@override_settings(**GRACE)
def test_a_new_model_appearing_mid_period_is_its_own_group(record, on_rate_card, api, customer):
    record([tokens("a", 1000, model="large", token_type="input")], now=T0 + H / 4)
    with time_machine.travel(T0 + H / 4, tick=False):
        before = api.get("/api/v1/customers/acme/usage").json()
    record(
        [tokens("b", 1000, at=T0 + H / 2, model="brand-new", token_type="input")],
        now=T0 + H / 2 + timedelta(minutes=1),
    )
    with time_machine.travel(T0 + H / 2 + timedelta(minutes=1), tick=False):
        after = api.get("/api/v1/customers/acme/usage").json()

    assert [line.get("dimensions") for line in before["lines"]][1:] == [
        {"model": "large", "token_type": "input"}
    ]
    assert [line.get("dimensions") for line in after["lines"]][1:] == [
        {"model": "brand-new", "token_type": "input"},
        {"model": "large", "token_type": "input"},
    ]
    assert after["total_minor"] == before["total_minor"]  # the new model is unpriced, 0
    closing.close_due_periods(now=T0 + H + timedelta(minutes=10))
    assert InvoiceLine.objects.filter(kind="unpriced").count() == 1


@override_settings(**GRACE)
def test_unique_count_and_latest_meters_work_per_group(api, meters, customer, record):
    from tests.factories import MeterFactory

    MeterFactory(code="sessions", aggregation="unique_count", unique_property="session")
    MeterFactory(code="seats", aggregation="latest")
    by_model = {
        "dimensions": ["model"],
        "rates": [{"match": {}, "model": "per_unit", "unit_amount_minor": "100"}],
    }
    plan = {
        "code": "u",
        "name": "U",
        "currency": "USD",
        "interval": "hour",
        "prices": [{"meter": "sessions", **by_model}, {"meter": "seats", **by_model}],
    }
    assert api.post("/api/v1/plans", plan, format="json").status_code == 201
    subscriptions.subscribe_customer(
        customer=customer, plan=PricePlan.objects.get(code="u"), now=T0
    )
    at = T0 + timedelta(minutes=5)
    record(
        [
            ev("s1", "sessions", 1, at, model="a", session="x"),
            ev("s2", "sessions", 1, at, model="a", session="x"),
            ev("s3", "sessions", 1, at, model="a", session="y"),
            ev("s4", "sessions", 1, at, model="b", session="x"),
            ev("p1", "seats", 4, at, model="a"),
            ev("p2", "seats", 2, at + timedelta(minutes=1), model="a"),
            ev("p3", "seats", 9, at, model="b"),
        ],
        now=at + timedelta(minutes=2),
    )
    closing.close_due_periods(now=T0 + H + timedelta(minutes=10))

    lines = Invoice.objects.get(customer=customer).lines.order_by("position")
    assert [(x.meter.code, x.pricing["dimensions"], x.quantity) for x in lines] == [
        ("seats", {"model": "a"}, D(2)),
        ("seats", {"model": "b"}, D(9)),
        ("sessions", {"model": "a"}, D(2)),
        ("sessions", {"model": "b"}, D(1)),
    ]
    assert reconcile() == []


def test_rate_group_of_an_ordinary_price_ignores_values():
    spec = PriceSpec("graduated", tiers=(Tier(D(10), D(1)), Tier(None, D(2))))
    assert rate_group(spec, (), D(15)) == 20
    assert rate_group(None, (), D(15)) == 0


# --- Finance: the admin list, its actions, the announcement ----------------------------------


@pytest.fixture
def finance(db):
    from django.contrib.auth.models import Group, User
    from django.test import Client

    user = User.objects.create_user("fran", password="not-used", is_staff=True)
    user.groups.add(Group.objects.get(name="Finance"))
    client = Client()
    client.force_login(user)
    client.user = user
    return client


@override_settings(**GRACE)
def test_finance_lists_unpriced_usage_with_totals_and_bills_or_waives_it(
    record, on_rate_card, finance
):
    from django.urls import reverse

    record(MIXED, now=T0 + timedelta(minutes=6))
    closing.close_due_periods(now=T0 + H + timedelta(minutes=10))
    huge, true, absent = InvoiceLine.objects.filter(kind="unpriced").order_by("position")
    url = reverse("admin:invoicing_unpricedline_changelist")

    page = finance.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="unpriced-totals"' in html
    assert "<td>llm_tokens</td><td>open</td><td>3</td><td>516.000000</td>" in html
    assert "model=huge, token_type=input" in html

    billed = finance.post(
        url, {"action": "bill_with_rule", "_selected_action": [huge.pk], "rule": "1", "index": 0}
    )
    waived = finance.post(
        url,
        {
            "action": "waive_with_reason",
            "_selected_action": [true.pk, absent.pk],
            "reason": "internal test traffic",
            "index": 0,
        },
    )
    refused = finance.post(
        url,
        {"action": "waive_with_reason", "_selected_action": [huge.pk], "reason": "x", "index": 0},
    )

    assert billed.status_code == waived.status_code == refused.status_code == 302
    decisions = {
        r.line_id: (r.action, r.rule_position, r.reason, r.user_id)
        for r in UnpricedResolution.objects.all()
    }
    user = finance.user.pk
    assert decisions == {
        huge.pk: ("bill", 1, "", user),
        true.pk: ("waive", None, "internal test traffic", user),
        absent.pk: ("waive", None, "internal test traffic", user),
    }
    audited = AuditEntry.objects.filter(action__startswith="unpriced.").values_list(
        "action", "actor_id"
    )
    assert sorted(audited) == [
        ("unpriced.billed", user),
        ("unpriced.waived", user),
        ("unpriced.waived", user),
    ]
    assert reconcile() == []
    totals = finance.get(url).content.decode()
    assert "<td>llm_tokens</td><td>bill</td><td>1</td><td>500.000000</td>" in totals


@override_settings(**GRACE, BILLING_OPS_EMAILS=["ops@example.com"])
def test_finance_is_told_of_each_unpriced_group_once(record, on_rate_card, mailoutbox):
    from billing_cycle.services import run_billing_cycle
    from notifications.models import Notification

    record(MIXED, now=T0 + timedelta(minutes=6))
    run_billing_cycle(now=T0 + H + timedelta(minutes=10), inline=True)
    run_billing_cycle(now=T0 + H + timedelta(minutes=11), inline=True)

    told = Notification.objects.filter(kind="ops_unpriced").order_by("pk")
    assert told.count() == 3
    assert {tuple(n.recipients) for n in told} == {("ops@example.com",)}
    unpriced_mails = [m for m in mailoutbox if m.to == ["ops@example.com"]]
    assert len(unpriced_mails) == 3
    assert "model=huge, token_type=input" in unpriced_mails[0].subject
    assert "500" in unpriced_mails[0].body


# --- The property: the invoice is the sum over groups of each group's rule ----------------


class _Rollback(Exception):
    pass


_MODELS = ["a", "b", "c", True, 5, 2.5, None]
_TYPES = ["in", "out", None]


def _specs():
    from hypothesis import strategies as st

    unit = st.decimals(min_value=0, max_value=3, places=3)
    included = st.sampled_from([D(0), D(5), D(50)])
    minimum = st.sampled_from([0, 0, 7])
    per_unit = st.builds(
        lambda u, i, m: PriceSpec(
            "per_unit", unit_amount_minor=u, included_quantity=i, minimum_minor=m
        ),
        unit,
        included,
        minimum,
    )
    tiered = st.builds(
        lambda model, u1, u2, flat: PriceSpec(
            model, tiers=(Tier(D(100), u1, flat), Tier(None, u2))
        ),
        st.sampled_from(["graduated", "volume"]),
        unit,
        unit,
        st.sampled_from([0, 3]),
    )
    package = st.builds(
        lambda size, amount: PriceSpec("package", package_size=size, package_amount_minor=amount),
        st.sampled_from([D(10), D(60)]),
        st.integers(min_value=0, max_value=50),
    )
    return st.one_of(per_unit, tiered, package)


def _rules():
    from hypothesis import strategies as st

    match = st.fixed_dictionaries(
        {},
        optional={
            "model": st.sampled_from(["a", "b", "true", "5", "2.5"]),
            "token_type": st.sampled_from(["in", "out"]),
        },
    )
    return st.lists(st.tuples(match, _specs()), min_size=1, max_size=4).map(
        lambda rules: [r for r in rules[:-1] if r[0]] + [rules[-1]]
    )


def _events():
    from hypothesis import strategies as st

    return st.lists(
        st.tuples(
            st.sampled_from(_MODELS),
            st.sampled_from(_TYPES),
            st.integers(min_value=0, max_value=400),
        ),
        min_size=0,
        max_size=12,
    )


def test_the_invoice_is_the_sum_over_groups_of_each_groups_rule(meters, customer, record, settings):
    from django.db import transaction
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings

    settings.BILLING_GRACE_PERIOD = 600
    settings.BILLING_REVIEW_PERIOD = 1800

    @hypothesis_settings(
        max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(rules=_rules(), events=_events())
    def check(rules, events):
        selectors._period_prices.clear()
        try:
            with transaction.atomic():
                item = plans.PriceInput("llm_tokens", None, ("model", "token_type"), tuple(rules))
                plan = plans.create_plan_version(
                    code="prop", name="P", currency="USD", interval="hour", prices=[item]
                )
                subscriptions.subscribe_customer(customer=customer, plan=plan, now=T0)
                raw = []
                for index, (model, token_type, quantity) in enumerate(events):
                    props = {}
                    if model is not None or index % 2:
                        props["model"] = model  # an explicit null on odd events
                    if token_type is not None:
                        props["token_type"] = token_type
                    at = T0 + timedelta(minutes=1 + index)
                    raw.append(
                        {
                            "event_id": f"e{index}",
                            "customer_id": "acme",
                            "meter": "llm_tokens",
                            "quantity": str(quantity),
                            "timestamp": at.isoformat(),
                            "properties": props,
                        }
                    )
                if raw:
                    record(raw, now=T0 + timedelta(minutes=30))
                closing.close_due_periods(now=T0 + H + timedelta(minutes=10))

                card = RateCard(
                    dimensions=("model", "token_type"),
                    rules=tuple(Rule(match=tuple(m.items()), spec=s) for m, s in rules),
                )
                groups: dict[tuple, Decimal] = {}
                for model, token_type, quantity in events:
                    values = values_of({"model": model, "token_type": token_type}, card.dimensions)
                    groups[values] = groups.get(values, D(0)) + quantity
                expected = sum(rate_group(card, values, q) for values, q in groups.items())
                invoice = Invoice.objects.get(customer=customer, period__start=T0)
                assert invoice.total_minor == expected
                lines = {
                    tuple((line.pricing.get("dimensions") or {}).values()): line
                    for line in invoice.lines.all()
                }
                assert {k: v.quantity for k, v in lines.items()} == groups
                for values, line in lines.items():
                    kind = "unpriced" if match_rule(card, values) is None else "usage"
                    assert line.kind == kind
                for event in UsageEvent.objects.filter(customer=customer):
                    assert len(aggregation.aggregates_covering(event)) == 1
                raise _Rollback
        except _Rollback:
            pass

    check()


def test_the_admin_shows_a_rate_cards_rules_and_copies_them_into_a_new_version(
    on_rate_card, finance
):
    from django.urls import reverse

    from invoicing.models import Price
    from invoicing.pricing import plan_price_specs

    price = Price.objects.get(plan=on_rate_card, meter__code="llm_tokens")
    page = finance.get(reverse("admin:invoicing_price_change", args=[price.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "0.001500000000" in html and "token_type" in html
    plan_page = finance.get(reverse("admin:invoicing_priceplan_change", args=[on_rate_card.pk]))
    assert plan_page.status_code == 200

    copied = finance.post(
        reverse("admin:invoicing_priceplan_changelist"),
        {"action": "copy_as_new_version", "_selected_action": [on_rate_card.pk], "index": 0},
    )

    assert copied.status_code == 302
    v2 = PricePlan.objects.get(code="agents", version=2)
    assert plan_price_specs(v2) == {pk: spec for pk, spec in plan_price_specs(on_rate_card).items()}
