"""Unpriced usage (DESIGN 4a): finance bills it with a rule of its plan version, or waives it.

A rate card's group that no rule matches closes as a zero-amount `unpriced` line: accepted,
aggregated, shown, never dropped and never silently free. Each such line gets one decision
(`UnpricedResolution`, unique per line, so repeating an action changes nothing):

- bill: the line's quantity rated with a rule that finance chooses from the line's price
  (the rate card of the plan version that priced the period); the customer's next close adds
  it as an adjustment line (invoicing.services.closing._billed_unpriced_lines);
- waive: nothing is billed, with the reason why.

Both are audited with the user. Reconcile reports unpriced usage with no decision.
"""

from __future__ import annotations

from dataclasses import replace

from django.db import transaction

from audit.services import record_audit
from billing_project.errors import DomainError
from invoicing.models import InvoiceLine, UnpricedResolution
from invoicing.pricing import PricingRecord, plan_price_specs
from invoicing.rate_cards import RateCard
from invoicing.rating import rate_line


class UnpricedActionInvalid(DomainError):
    """The line cannot be billed or waived so (422): not unpriced, decided otherwise, no such
    rule, or no reason."""

    code = "invalid_unpriced_action"


def _locked_line(line_id: int) -> InvoiceLine:
    line = (
        InvoiceLine.objects.select_for_update(of=("self",))
        .select_related(
            "invoice__period__plan",
            "invoice__customer",
            "source_period__plan",
            "meter",
            "aggregate",
        )
        .filter(pk=line_id)
        .first()
    )
    if line is None or line.kind != InvoiceLine.Kind.UNPRICED:
        raise UnpricedActionInvalid(f"line {line_id} is not unpriced usage")
    return line


def rate_card_of(line: InvoiceLine) -> RateCard | None:
    """The rate card that left a line unpriced: its meter's price in the plan version of the
    period whose usage it is."""
    plan = (line.source_period or line.invoice.period).plan
    price = plan_price_specs(plan).get(line.meter_id) if line.meter_id else None
    return price if isinstance(price, RateCard) else None


@transaction.atomic
def bill_unpriced_line(*, line_id: int, rule_position: int, user: object) -> UnpricedResolution:
    """Price an unpriced line with rule `rule_position` (from 1) of its rate card, for the
    customer's next invoice. Idempotent: billing it again with the same rule returns the same
    decision; any other second decision is refused."""
    line = _locked_line(line_id)
    existing = UnpricedResolution.objects.filter(line=line).first()
    if existing is not None:
        if existing.action == UnpricedResolution.Action.BILL and (
            existing.rule_position == rule_position
        ):
            return existing
        raise UnpricedActionInvalid(f"line {line_id} was already {existing.action}ed")
    card = rate_card_of(line)
    if card is None or not 1 <= rule_position <= len(card.rules):
        rules = len(card.rules) if card else 0
        raise UnpricedActionInvalid(f"choose a rule from 1 to {rules} of the line's rate card")
    rule = card.rules[rule_position - 1]
    aggregate = line.aggregate
    cumulative = aggregate.cumulative_quantity if aggregate else line.quantity
    rated = rate_line(rule.spec, cumulative)
    amount = rated.amount_minor
    if aggregate is not None and aggregate.kind == aggregate.Kind.ADJUSTMENT:
        # Late unpriced usage: at the margin of its group, like any adjustment.
        amount -= rate_line(rule.spec, cumulative - aggregate.quantity).amount_minor
    stored = PricingRecord.from_json(line.pricing)
    record = replace(
        PricingRecord.from_rating(rule.spec, rated),
        dimensions=stored.dimensions,
        rule=rule.match,
        rule_position=rule_position,
    )
    resolution = UnpricedResolution.objects.create(
        line=line,
        action=UnpricedResolution.Action.BILL,
        rule_position=rule_position,
        amount_minor=amount,
        pricing=record.to_json(),
        user_id=getattr(user, "pk", None),
    )
    record_audit(
        action="unpriced.billed",
        obj=line,
        user=user,
        customer_external_id=line.invoice.customer.external_id,
        data={
            "line_id": line.pk,
            "invoice_id": line.invoice_id,
            "quantity": str(line.quantity),
            "dimensions": dict(stored.dimensions),
            "rule_position": rule_position,
            "rule": dict(rule.match),
            "amount_minor": amount,
        },
    )
    return resolution


@transaction.atomic
def waive_unpriced_line(*, line_id: int, reason: str, user: object) -> UnpricedResolution:
    """Waive an unpriced line: nothing is billed for it, for `reason` (required).
    Idempotent: waiving it again returns the same decision; billing it after is refused."""
    reason = reason.strip()
    if not reason:
        raise UnpricedActionInvalid("give the reason for waiving unpriced usage", field="reason")
    line = _locked_line(line_id)
    existing = UnpricedResolution.objects.filter(line=line).first()
    if existing is not None:
        if existing.action == UnpricedResolution.Action.WAIVE:
            return existing
        raise UnpricedActionInvalid(f"line {line_id} was already {existing.action}ed")
    resolution = UnpricedResolution.objects.create(
        line=line,
        action=UnpricedResolution.Action.WAIVE,
        reason=reason,
        user_id=getattr(user, "pk", None),
    )
    record_audit(
        action="unpriced.waived",
        obj=line,
        user=user,
        customer_external_id=line.invoice.customer.external_id,
        data={
            "line_id": line.pk,
            "invoice_id": line.invoice_id,
            "quantity": str(line.quantity),
            "dimensions": dict(PricingRecord.from_json(line.pricing).dimensions),
            "reason": reason,
        },
    )
    return resolution
