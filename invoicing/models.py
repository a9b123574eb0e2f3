"""Price plans, subscriptions, billing periods, usage aggregates and invoices.

Money is integer minor units (`*_minor`, BigIntegerField); unit prices are Decimals in minor
units with up to 12 places; quantities are Decimals with 6 places. Invariants live in
constraints: one plan version per (code, version), one period per (customer, start), one
invoice per period, invoice numbers unique. Usage aggregates live in metering.
"""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from metering.currencies import CURRENCY_CHOICES
from metering.localtime import customer_span
from metering.models import (
    QUANTITY,
    TOTAL_QUANTITY,
    Customer,
    DecimalPrecision,
    Meter,
    UsageAggregate,
)

UNIT_PRICE: DecimalPrecision = {"max_digits": 30, "decimal_places": 12}  # minor units


class Interval(models.TextChoices):
    MONTH = "month", "Monthly"
    DAY = "day", "Daily"
    HOUR = "hour", "Hourly"


class PricePlan(models.Model):
    """One version of a plan. A new version of a code applies from each customer's next period."""

    code = models.SlugField(max_length=64)
    version = models.PositiveIntegerField(default=1)
    name = models.CharField(max_length=200)
    currency = models.CharField(max_length=3, choices=CURRENCY_CHOICES, default="USD")
    interval = models.CharField(max_length=8, choices=Interval.choices, default=Interval.MONTH)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["code", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["code", "version"], name="plan_code_version_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.code} v{self.version})"


class Price(models.Model):
    """How one meter is priced in a plan (DESIGN section 4)."""

    class Model(models.TextChoices):
        PER_UNIT = "per_unit", "Per unit"
        GRADUATED = "graduated", "Graduated tiers"
        VOLUME = "volume", "Volume tiers"
        PACKAGE = "package", "Package (per N units, rounded up)"

    plan = models.ForeignKey(PricePlan, on_delete=models.CASCADE, related_name="prices")
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="+")
    # Empty for a rate card (a price with `dimensions`: its rules carry the models).
    model = models.CharField(max_length=16, choices=Model.choices, blank=True)
    unit_amount_minor = models.DecimalField(**UNIT_PRICE, null=True, blank=True)
    package_size = models.DecimalField(**QUANTITY, null=True, blank=True)
    package_amount_minor = models.BigIntegerField(null=True, blank=True)
    included_quantity = models.DecimalField(**QUANTITY, default=Decimal(0))
    minimum_minor = models.BigIntegerField(default=0)
    # DESIGN 4a: the event properties this meter is priced by (1 to 3 names; empty: an
    # ordinary price). Its rules are `rates`, in position order.
    dimensions = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["plan", "meter__code"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "meter"], name="price_one_per_meter"),
            models.CheckConstraint(condition=Q(minimum_minor__gte=0), name="price_min_ge_0"),
            models.CheckConstraint(
                condition=Q(included_quantity__gte=0), name="price_included_ge_0"
            ),
        ]

    def __str__(self) -> str:
        how = f"by {', '.join(self.dimensions)}" if self.dimensions else self.model
        return f"{self.plan.code} v{self.plan.version}: {self.meter.code} ({how})"


class PriceTier(models.Model):
    """A tier of a graduated or volume price; `up_to` is an inclusive upper bound, null = open."""

    price = models.ForeignKey(Price, on_delete=models.CASCADE, related_name="tiers")
    position = models.PositiveSmallIntegerField()
    up_to = models.DecimalField(**QUANTITY, null=True, blank=True)
    unit_amount_minor = models.DecimalField(**UNIT_PRICE, default=Decimal(0))
    flat_amount_minor = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["price", "position"]
        constraints = [
            models.UniqueConstraint(fields=["price", "position"], name="tier_position_unique"),
        ]

    def __str__(self) -> str:
        return f"tier {self.position} up to {self.up_to if self.up_to is not None else '∞'}"


class PriceRate(models.Model):
    """One rule of a rate card (DESIGN 4a): the values it matches and an ordinary price.

    Rules apply in `position` order: the first whose every `match` entry equals the group's
    value prices it; `{}` (the catch-all) may only be last.
    """

    price = models.ForeignKey(Price, on_delete=models.CASCADE, related_name="rates")
    position = models.PositiveSmallIntegerField()
    match = models.JSONField(default=dict, blank=True)  # dimension -> exact text value
    model = models.CharField(max_length=16, choices=Price.Model.choices)
    unit_amount_minor = models.DecimalField(**UNIT_PRICE, null=True, blank=True)
    package_size = models.DecimalField(**QUANTITY, null=True, blank=True)
    package_amount_minor = models.BigIntegerField(null=True, blank=True)
    included_quantity = models.DecimalField(**QUANTITY, default=Decimal(0))
    minimum_minor = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["price", "position"]
        constraints = [
            models.UniqueConstraint(fields=["price", "position"], name="rate_position_unique"),
            models.CheckConstraint(condition=Q(minimum_minor__gte=0), name="rate_min_ge_0"),
            models.CheckConstraint(
                condition=Q(included_quantity__gte=0), name="rate_included_ge_0"
            ),
        ]

    def __str__(self) -> str:
        match = ", ".join(f"{k}={v}" for k, v in self.match.items()) or "any other"
        return f"rule {self.position} ({match}): {self.model}"


class PriceRateTier(models.Model):
    """A tier of a rate card rule with a graduated or volume model (like PriceTier)."""

    rate = models.ForeignKey(PriceRate, on_delete=models.CASCADE, related_name="tiers")
    position = models.PositiveSmallIntegerField()
    up_to = models.DecimalField(**QUANTITY, null=True, blank=True)
    unit_amount_minor = models.DecimalField(**UNIT_PRICE, default=Decimal(0))
    flat_amount_minor = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["rate", "position"]
        constraints = [
            models.UniqueConstraint(fields=["rate", "position"], name="rate_tier_position_unique"),
        ]

    def __str__(self) -> str:
        return f"tier {self.position} up to {self.up_to if self.up_to is not None else '∞'}"


class Subscription(models.Model):
    """A customer's plan and billing anchor. Periods are aligned to the anchor in the
    customer's time zone; `plan` applies to periods created from now on (the next period)."""

    customer = models.OneToOneField(Customer, on_delete=models.CASCADE, related_name="subscription")
    plan = models.ForeignKey(PricePlan, on_delete=models.PROTECT, related_name="subscriptions")
    anchor = models.DateTimeField(help_text="Periods start at this local day/time (UTC stored).")
    started_at = models.DateTimeField()
    # End of the latest period row created for this subscription: periods are materialised
    # up to here, so the beat task finds subscriptions needing a new period with one index scan.
    periods_until = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.customer.external_id} on {self.plan}"


class BillingPeriod(models.Model):
    """A half-open [start, end) billing period of one customer, closed at most once.

    open: usage is accruing; closing: the period has ended and waits out the grace period for
    late events; closed: aggregates and the draft invoice are written (later events of this
    period are billed as adjustments on the next invoice).
    """

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        CLOSING = "closing", "Closing (grace period)"
        CLOSED = "closed", "Closed"

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="periods")
    plan = models.ForeignKey(PricePlan, on_delete=models.PROTECT, related_name="+")
    start = models.DateTimeField()
    end = models.DateTimeField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    closed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["customer", "-start"]
        constraints = [
            models.UniqueConstraint(fields=["customer", "start"], name="period_unique_start"),
            models.CheckConstraint(condition=Q(start__lt=F("end")), name="period_start_before_end"),
        ]
        indexes = [models.Index(fields=["status", "end"], name="period_status_end")]

    def __str__(self) -> str:
        # In the customer's zone, named (metering.localtime), as every page shows a period.
        return f"{self.customer.external_id} {customer_span(self.start, self.end, self.customer)}"


class Invoice(models.Model):
    """The invoice of one billing period. Only a draft changes; numbers are gapless."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        FINALIZED = "finalized", "Finalized"
        PAID = "paid", "Paid"
        VOID = "void", "Void"
        UNCOLLECTIBLE = "uncollectible", "Uncollectible"

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="invoices")
    period = models.OneToOneField(BillingPeriod, on_delete=models.PROTECT, related_name="invoice")
    number = models.CharField(max_length=32, unique=True, null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    currency = models.CharField(max_length=3, choices=CURRENCY_CHOICES)
    total_minor = models.BigIntegerField(default=0)
    finalize_after = models.DateTimeField(help_text="End of the review period.")
    # Set when the itemized usage summary was sent; finalization waits for it.
    summary_sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finalized_at = models.DateTimeField(null=True, blank=True)
    # When payment is due: finalized_at + BILLING_PAYMENT_TERMS_DAYS, fixed at finalization.
    due_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    void_reason = models.TextField(blank=True)
    # The Stripe invoice this one was delivered as (BILLING_BACKEND=stripe), set once created.
    stripe_invoice_id = models.CharField(max_length=255, unique=True, null=True, blank=True)
    # Stripe's page where the customer views and pays it (set once finalized in Stripe).
    stripe_hosted_invoice_url = models.URLField(max_length=2000, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-period__start"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status="draft", number__isnull=True)
                | (~Q(status="draft") & Q(number__isnull=False)),
                name="invoice_number_iff_not_draft",
            ),
        ]
        indexes = [models.Index(fields=["status", "finalize_after"], name="invoice_due")]

    def __str__(self) -> str:
        return self.number or f"draft #{self.pk}"


class InvoiceLine(models.Model):
    """One line of an invoice; usage and adjustment lines point to the aggregate they bill."""

    class Kind(models.TextChoices):
        USAGE = "usage", "Usage"
        ADJUSTMENT = "adjustment", "Prior-period adjustment"
        CAP_CREDIT = "cap_credit", "Budget cap credit"
        # DESIGN 4a: a group of a rate card that no rule matches (amount 0, until finance
        # bills it, see UnpricedResolution, or waives it).
        UNPRICED = "unpriced", "Unpriced usage"

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    aggregate = models.OneToOneField(
        UsageAggregate, on_delete=models.PROTECT, null=True, blank=True, related_name="line"
    )
    # For adjustment lines: the earlier period whose late usage this line bills.
    source_period = models.ForeignKey(
        BillingPeriod, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, null=True, blank=True)
    description = models.CharField(max_length=300)
    quantity = models.DecimalField(**TOTAL_QUANTITY)
    amount_minor = models.BigIntegerField()
    # How the line was priced: `invoicing.pricing.PricingRecord`, as its to_json() writes it.
    pricing = models.JSONField(default=dict, blank=True)
    # The Stripe invoice item that carries this line (BILLING_BACKEND=stripe).
    stripe_invoice_item_id = models.CharField(max_length=255, unique=True, null=True, blank=True)

    class Meta:
        ordering = ["invoice", "position"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "position"], name="line_position_unique"),
        ]

    def __str__(self) -> str:
        return self.description


class UnpricedLine(InvoiceLine):
    """Unpriced usage lines (kind `unpriced`) as finance lists, bills and waives them."""

    class Meta:
        proxy = True
        verbose_name = "unpriced usage line"

    def __str__(self) -> str:
        return f"{self.description} ({self.quantity})"


class UnpricedResolution(models.Model):
    """Finance's decision on one unpriced line (DESIGN 4a): bill it or waive it, once.

    `bill`: `amount_minor` is the line's quantity rated with the chosen rule (`rule_position`
    of the line's price) and `pricing` its record; the customer's next close adds it as an
    adjustment line (`billed_line`, set then). `waive`: nothing is billed; `reason` says why.
    One resolution per line (unique), so a repeated action changes nothing.
    """

    class Action(models.TextChoices):
        BILL = "bill", "Bill"
        WAIVE = "waive", "Waive"

    line = models.OneToOneField(InvoiceLine, on_delete=models.PROTECT, related_name="resolution")
    action = models.CharField(max_length=8, choices=Action.choices)
    reason = models.TextField(blank=True)
    rule_position = models.PositiveSmallIntegerField(null=True, blank=True)
    amount_minor = models.BigIntegerField(default=0)
    pricing = models.JSONField(default=dict, blank=True)
    billed_line = models.OneToOneField(
        InvoiceLine,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="billed_resolution",
    )
    user = models.ForeignKey(
        "auth.User", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(action="bill", rule_position__isnull=False)
                | Q(action="waive", amount_minor=0) & ~Q(reason=""),
                name="unpriced_resolution_shape",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.action} line {self.line_id}"


class InvoiceNumberSequence(models.Model):
    """The last invoice number issued per year; its row lock makes numbering gapless."""

    year = models.PositiveSmallIntegerField(primary_key=True)
    last_number = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.year}: {self.last_number}"


class CreditNote(models.Model):
    """A correction of a finalized invoice without voiding it: it credits some of the invoice's
    lines (each at most what the line billed, less earlier credits), with a reason, and so
    reduces what the customer owes. Numbered gaplessly in its own sequence (CN-2026-000001);
    never changes once issued. With BILLING_BACKEND=stripe it is created in Stripe as a
    credit note on the Stripe invoice (invoicing.stripe.credit_notes)."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="credit_notes")
    number = models.CharField(max_length=32, unique=True)
    currency = models.CharField(max_length=3, choices=CURRENCY_CHOICES)
    total_minor = models.BigIntegerField()
    reason = models.TextField(max_length=1000)
    issued_at = models.DateTimeField()
    # The Stripe credit note this one was delivered as (BILLING_BACKEND=stripe).
    stripe_credit_note_id = models.CharField(max_length=255, unique=True, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-issued_at", "-pk"]
        constraints = [
            models.CheckConstraint(condition=Q(total_minor__gt=0), name="credit_note_total_gt_0"),
        ]

    def __str__(self) -> str:
        return self.number


class CreditNoteLine(models.Model):
    """The part of one invoice line that a credit note credits (a positive amount)."""

    credit_note = models.ForeignKey(CreditNote, on_delete=models.PROTECT, related_name="lines")
    invoice_line = models.ForeignKey(
        InvoiceLine, on_delete=models.PROTECT, related_name="credit_lines"
    )
    position = models.PositiveSmallIntegerField()
    description = models.CharField(max_length=300)
    amount_minor = models.BigIntegerField()

    class Meta:
        ordering = ["credit_note", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["credit_note", "position"], name="credit_line_position_unique"
            ),
            models.UniqueConstraint(
                fields=["credit_note", "invoice_line"], name="credit_line_once_per_note"
            ),
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="credit_line_gt_0"),
        ]

    def __str__(self) -> str:
        return self.description


class CreditNoteNumberSequence(models.Model):
    """The last credit note number issued per year (gapless, like InvoiceNumberSequence)."""

    year = models.PositiveSmallIntegerField(primary_key=True)
    last_number = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.year}: {self.last_number}"


# --- Stripe --------------------------------------------------------------------------------------
# Written only by invoicing.stripe (its outbox): intent is recorded here before Stripe is called,
# and the outcome after, each in its own transaction (no network call inside one).


class StripeCustomer(models.Model):
    """Our customer's Stripe customer: created on demand (our ids in its metadata) or linked by
    finance staff to an existing one. `requested_params` is what the first creation request
    sent, so a retry under the same idempotency key sends exactly the same parameters."""

    class Source(models.TextChoices):
        CREATED = "created", "Created by us"
        LINKED = "linked", "Linked by finance staff"

    customer = models.OneToOneField(Customer, on_delete=models.PROTECT, related_name="stripe_link")
    stripe_customer_id = models.CharField(max_length=255, unique=True, null=True, blank=True)
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.CREATED)
    requested_at = models.DateTimeField(null=True, blank=True)
    requested_params = models.JSONField(default=dict, blank=True)
    # Bumped after Stripe answered the creation with a (saved) error: the next request goes
    # under a new idempotency key, after a search by our id (invoicing.stripe.outbox).
    key_attempt = models.PositiveIntegerField(default=0)
    # The Stripe customer's invoice default payment method as last seen (Checkout, webhooks).
    default_payment_method = models.CharField(max_length=255, blank=True)
    payment_method_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "Stripe customer"

    def __str__(self) -> str:
        return f"{self.customer.external_id} → {self.stripe_customer_id or '(not created yet)'}"


class StripeInvoiceSync(models.Model):
    """The delivery of one finalized invoice to Stripe, resumable step by step.

    pending: to do or under way (transient errors are retried by Celery); delivered: created,
    one item per line, finalized and charged or sent; awaiting_method: finalized in Stripe and
    open, not charged because the Stripe customer has no payment method (resumed when one is
    added); failed: Stripe refused it (a permanent error, see last_error); needs_attention:
    still unresolved 24 hours after the first attempt, when Stripe may have forgotten our
    idempotency keys, so nothing is resent automatically.

    The amounts are the Stripe invoice's as last seen: a Stripe invoice below the currency's
    minimum charge is "paid" with amount_paid 0 and its amount carried to the customer's
    balance (ending_balance); `payment_failure` is Stripe's reason for the last declined charge.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        AWAITING_PAYMENT_METHOD = "awaiting_method", "Awaiting payment method"
        FAILED = "failed", "Failed"
        NEEDS_ATTENTION = "needs_attention", "Needs attention"

    invoice = models.OneToOneField(Invoice, on_delete=models.PROTECT, related_name="stripe_sync")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    first_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    collected_at = models.DateTimeField(
        null=True, blank=True, help_text="When Stripe was asked to charge or send it."
    )
    delivered_at = models.DateTimeField(null=True, blank=True)
    # The Stripe invoice's status as last seen (API answer or webhook), and Stripe's time of it.
    stripe_status = models.CharField(max_length=16, blank=True)
    stripe_status_at = models.DateTimeField(null=True, blank=True)
    key_attempt = models.PositiveIntegerField(default=0)  # see invoicing.stripe.outbox
    payment_failure = models.TextField(blank=True)
    amount_due = models.BigIntegerField(null=True, blank=True)
    amount_paid = models.BigIntegerField(null=True, blank=True)
    starting_balance = models.BigIntegerField(null=True, blank=True)
    ending_balance = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "Stripe invoice sync"
        indexes = [models.Index(fields=["status", "last_attempt_at"], name="stripe_sync_due")]

    def __str__(self) -> str:
        return f"{self.invoice}: {self.status}"


class StripeCreditNoteSync(models.Model):
    """The delivery of one credit note to Stripe (invoicing.stripe.credit_notes), following
    the same outbox as invoices: pending, delivered, failed, needs_attention."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"
        NEEDS_ATTENTION = "needs_attention", "Needs attention"

    credit_note = models.OneToOneField(
        CreditNote, on_delete=models.PROTECT, related_name="stripe_sync"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    key_attempt = models.PositiveIntegerField(default=0)  # see invoicing.stripe.outbox
    first_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "Stripe credit note sync"

    def __str__(self) -> str:
        return f"{self.credit_note}: {self.status}"


class StripeMeterMapping(models.Model):
    """Which Stripe Billing Meter (by event name) receives a meter's usage.

    Only usage billed or received from `reporting_from` on is reported, so mapping a meter
    never replays its history. The Stripe meter should aggregate with `sum`: we report
    increments in whole units.
    """

    meter = models.OneToOneField(Meter, on_delete=models.PROTECT, related_name="stripe_mapping")
    event_name = models.CharField(max_length=100, unique=True)
    reporting_from = models.DateTimeField(default=timezone.now)
    is_active = models.BooleanField(default=True)
    # Realtime reporting: the settle cutoff of its last run (where the next run looks from).
    realtime_cutoff = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "Stripe meter mapping"

    def __str__(self) -> str:
        return f"{self.meter.code} → {self.event_name}"


class UsageReport(models.Model):
    """One Billing Meter event, written (with exactly the usage it covers) before it is sent.

    `kind=close`: the usage of one aggregate (one customer, meter and window, billed at a
    close). `kind=realtime`: the customer's events of the meter with ids in
    (after_event_pk, through_event_pk]; the next realtime report starts where this one ends,
    so an event is covered by one report only, however late it arrives.

    Stripe takes whole numbers: `value` is what is sent, floor(cumulative_quantity) minus the
    previous report's floor (per customer and meter), so fractions carry over to later reports
    and the values sent always sum to the whole part of the usage covered. The meter event's
    `identifier` (and idempotency key) derives from the primary key.
    """

    class Kind(models.TextChoices):
        CLOSE = "close", "At period close"
        REALTIME = "realtime", "Realtime"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        NEEDS_ATTENTION = "needs_attention", "Needs attention"

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="+")
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="+")
    event_name = models.CharField(max_length=100)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    aggregate = models.OneToOneField(
        UsageAggregate,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="stripe_report",
    )
    after_event_pk = models.BigIntegerField(null=True, blank=True)
    through_event_pk = models.BigIntegerField(null=True, blank=True)
    event_count = models.BigIntegerField(default=0)
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    quantity = models.DecimalField(**TOTAL_QUANTITY)
    cumulative_quantity = models.DecimalField(**TOTAL_QUANTITY)
    value = models.BigIntegerField()
    timestamp = models.DateTimeField(help_text="The meter event's timestamp in Stripe.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    first_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    key_attempt = models.PositiveIntegerField(default=0)  # see invoicing.stripe.outbox
    # The meter event's parameters as first sent: every resend sends exactly these.
    sent_params = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "meter", "after_event_pk"],
                condition=Q(kind="realtime"),
                name="usage_report_realtime_chain",
            ),
            models.CheckConstraint(
                condition=Q(kind="close", aggregate__isnull=False)
                | Q(kind="realtime", through_event_pk__isnull=False),
                name="usage_report_covers_something",
            ),
        ]
        indexes = [
            models.Index(fields=["customer", "meter", "kind"], name="usage_report_cmk"),
            models.Index(fields=["status", "last_attempt_at"], name="usage_report_due"),
        ]

    def __str__(self) -> str:
        return f"usage report {self.pk} ({self.kind} {self.event_name}: {self.value})"


class StripeWebhookEvent(models.Model):
    """A Stripe event received on the webhook, stored once by its id (replays are no-ops)."""

    class Outcome(models.TextChoices):
        APPLIED = "applied", "Applied"
        UNCHANGED = "unchanged", "Nothing to change"
        STALE = "stale", "Older than our state: ignored"
        IGNORED = "ignored", "Not ours or not handled"

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    created = models.DateTimeField(help_text="When Stripe created the event.")
    livemode = models.BooleanField(default=False)
    stripe_object_id = models.CharField(max_length=255, blank=True)
    invoice = models.ForeignKey(
        Invoice, on_delete=models.PROTECT, null=True, blank=True, related_name="stripe_events"
    )
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    detail = models.TextField(blank=True)
    payload = models.JSONField(default=dict)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-received_at", "-pk"]
        verbose_name = "Stripe webhook event"

    def __str__(self) -> str:
        return f"{self.event_id} {self.type} ({self.outcome})"
