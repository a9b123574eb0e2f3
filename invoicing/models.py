"""Price plans, subscriptions, billing periods, usage aggregates, invoices and the audit log.

Money is integer minor units (`*_minor`, BigIntegerField); unit prices are Decimals in minor
units with up to 12 places; quantities are Decimals with 6 places. Invariants live in
constraints: one plan version per (code, version), one period per (customer, start), one
invoice per period, invoice numbers unique. Usage aggregates live in metering.
"""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.db.models import F, Q

from metering.currencies import CURRENCY_CHOICES
from metering.models import TOTAL_QUANTITY, Customer, Meter, UsageAggregate

UNIT_PRICE = {"max_digits": 30, "decimal_places": 12}  # minor units, up to 12 places
QUANTITY = {"max_digits": 19, "decimal_places": 6}


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
    model = models.CharField(max_length=16, choices=Model.choices)
    unit_amount_minor = models.DecimalField(**UNIT_PRICE, null=True, blank=True)
    package_size = models.DecimalField(**QUANTITY, null=True, blank=True)
    package_amount_minor = models.BigIntegerField(null=True, blank=True)
    included_quantity = models.DecimalField(**QUANTITY, default=Decimal(0))
    minimum_minor = models.BigIntegerField(default=0)

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
        return f"{self.plan.code} v{self.plan.version}: {self.meter.code} ({self.model})"


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
        return (
            f"{self.customer.external_id} [{self.start:%Y-%m-%d %H:%M}, {self.end:%Y-%m-%d %H:%M})"
        )


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
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    void_reason = models.TextField(blank=True)
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
    # The price as rated (model, unit amounts, tiers applied), for the invoice document.
    pricing = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["invoice", "position"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "position"], name="line_position_unique"),
        ]

    def __str__(self) -> str:
        return self.description


class InvoiceNumberSequence(models.Model):
    """The last invoice number issued per year; its row lock makes numbering gapless."""

    year = models.PositiveSmallIntegerField(primary_key=True)
    last_number = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.year}: {self.last_number}"


class AuditEntry(models.Model):
    """Append-only record of what happened and who did it.

    PostgreSQL refuses UPDATE and DELETE on this table (a trigger, see migrations); the actor
    is kept as plain values, not a foreign key, so deleting a user never touches the log.
    """

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    action = models.CharField(max_length=64, db_index=True)
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor = models.CharField(max_length=150, help_text="user name, or 'system'")
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    customer_external_id = models.CharField(max_length=128, blank=True, db_index=True)
    data = models.JSONField(default=dict)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["object_type", "object_id"], name="audit_object")]

    def __str__(self) -> str:
        what = f"{self.object_type}#{self.object_id}"
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {what}"
