"""Customers, meters (the billable unit), usage events and API keys.

Invariants live in the schema: a customer's external id is unique, an event is unique per
(customer, event_id) for ever, quantities are non-negative decimals with 6 places.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TypedDict
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import models
from django.db.models import Q

from metering.currencies import CURRENCY_CHOICES


class DecimalPrecision(TypedDict):
    """A DecimalField's digits, spread into model and serializer fields with ``**``."""

    max_digits: int
    decimal_places: int


QUANTITY: DecimalPrecision = {"max_digits": 19, "decimal_places": 6}  # up to 10^12, 6 places
TOTAL_QUANTITY: DecimalPrecision = {"max_digits": 28, "decimal_places": 6}  # sums of many events


def validate_timezone_name(value: str) -> None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"{value!r} is not an IANA time zone, e.g. Europe/Paris") from None


def validate_email_list(value: object) -> None:
    if not isinstance(value, list):
        raise ValidationError("Enter a list of e-mail addresses.")
    for item in value:
        if not isinstance(item, str):
            raise ValidationError("Each e-mail address must be a string.")
        validate_email(item)


class Customer(models.Model):
    """A customer of the operator, identified towards agents by its external id."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused (budget cap reached)"
        ARCHIVED = "archived", "Archived"

    external_id = models.CharField(max_length=128, unique=True)
    name = models.CharField(max_length=200)
    # Billing contacts: a list of e-mail addresses that receive summaries and alerts.
    emails = models.JSONField(default=list, blank=True, validators=[validate_email_list])
    currency = models.CharField(max_length=3, choices=CURRENCY_CHOICES, default="USD")
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone_name])
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    # Billing details printed on its invoices and credit notes (the legal name is `name`).
    billing_address = models.TextField(max_length=1000, blank=True)
    tax_id = models.CharField(max_length=64, blank=True, help_text="VAT or other tax number")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["external_id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.external_id})"


class Meter(models.Model):
    """One billable unit, before any pricing: what agents report and how a period sums it up."""

    class Aggregation(models.TextChoices):
        SUM = "sum", "Sum of quantities"
        COUNT = "count", "Count of events"
        MAX = "max", "Maximum quantity"
        UNIQUE_COUNT = "unique_count", "Count of unique property values"
        LATEST = "latest", "Latest quantity"

    code = models.SlugField(
        max_length=64,
        unique=True,
        help_text="What agents send in the `meter` field, e.g. agent_tasks. "
        "Cannot change once the meter has usage.",
    )
    name = models.CharField(max_length=200)
    unit = models.CharField(max_length=32, help_text='Singular unit label, e.g. "task".')
    aggregation = models.CharField(max_length=16, choices=Aggregation.choices)
    unique_property = models.CharField(
        max_length=64,
        blank=True,
        help_text="For unique_count: the property whose distinct values are counted.",
    )
    description = models.TextField(blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["code"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(aggregation="unique_count") | ~Q(unique_property=""),
                name="meter_unique_count_has_property",
            ),
        ]

    def __str__(self) -> str:
        return self.code


class ApiKey(models.Model):
    """An API key for agents. Only a SHA-256 hash of the secret is stored, with a visible prefix.

    A key without a customer is service-wide (may post for any customer); with one, it is
    scoped to that customer.
    """

    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    customer = models.ForeignKey(
        Customer,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="api_keys",
        help_text="Leave empty for a service-wide key.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_service_wide(self) -> bool:
        return self.customer_id is None

    @property
    def actor_label(self) -> str:
        """How the audit log and histories name what this key did."""
        return f"api key {self.prefix}"


class UsageEvent(models.Model):
    """One usage event as an agent reported it; the source of truth for billing.

    `fingerprint` is a SHA-256 of the canonical payload (customer, meter, quantity, timestamp,
    properties), so a repeated event_id is told apart as duplicate or conflict in one compare.
    """

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="+")
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="+")
    event_id = models.CharField(max_length=128)
    quantity = models.DecimalField(**QUANTITY)
    timestamp = models.DateTimeField()
    properties = models.JSONField(default=dict, blank=True)
    fingerprint = models.CharField(max_length=64)
    received_at = models.DateTimeField()
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        # (customer, event_id) is unique through UsageEventKey: on PostgreSQL this table is
        # range-partitioned by timestamp, where a unique index would have to include it.
        constraints = [
            models.CheckConstraint(
                condition=Q(quantity__gte=Decimal(0)), name="usage_event_quantity_non_negative"
            ),
        ]
        indexes = [
            models.Index(fields=["customer", "meter", "timestamp"], name="usage_event_cmt"),
            models.Index(fields=["customer", "event_id"], name="usage_event_ce"),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id}/{self.event_id}"


class UsageEventKey(models.Model):
    """The deduplication key of every event ever accepted: (customer, event_id) is unique for
    ever, whatever the timestamp. A small global table, so the events table can be partitioned
    by time; ingestion inserts the key first and the event only if the key was new."""

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="+")
    event_id = models.CharField(max_length=128)
    fingerprint = models.CharField(max_length=64)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["customer", "event_id"], name="usage_event_key_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id}/{self.event_id}"


class UsageAggregate(models.Model):
    """The usage of one customer and meter over a window, billed at one period close.

    `kind=usage`: the events of the closing period itself. `kind=adjustment`: events of an
    earlier, already-billed window that arrived late. `cumulative_quantity` is the window's
    aggregated quantity over all its events so far and `quantity` the increase billed now, so
    an adjustment is rated at the margin (rate(new total) - rate(old total)), never from zero.
    `billed_through` is the end of the period whose close created it: one close, one aggregate
    per (customer, meter, window). Events are never updated: the aggregate records which it
    billed as an id range (see metering/aggregation.py).
    """

    class Kind(models.TextChoices):
        USAGE = "usage", "Usage"
        ADJUSTMENT = "adjustment", "Prior-period adjustment"

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="+")
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    billed_through = models.DateTimeField()
    # The events billed: timestamp in the window and id in (event_pk_after, event_pk_through].
    event_pk_after = models.BigIntegerField(default=0)
    event_pk_through = models.BigIntegerField(default=0)
    quantity = models.DecimalField(**TOTAL_QUANTITY)
    cumulative_quantity = models.DecimalField(**TOTAL_QUANTITY)
    event_count = models.BigIntegerField()
    first_event_at = models.DateTimeField(null=True, blank=True)
    last_event_at = models.DateTimeField(null=True, blank=True)
    # A rate card's group (DESIGN 4a): the price's dimension names -> the group's values
    # (text, None for absent); None for a meter priced without dimensions. `dimension_key`
    # names the group in the unique constraint (metering.aggregations.dimension_key).
    dimensions = models.JSONField(null=True, blank=True)
    dimension_key = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "meter", "dimension_key", "window_start", "billed_through"],
                name="aggregate_one_per_close",
            ),
        ]

    def __str__(self) -> str:
        return (
            f"{self.kind} {self.meter.code} [{self.window_start:%Y-%m-%d %H:%M}]: {self.quantity}"
        )


class PortalMembership(models.Model):
    """Links a portal login to the one customer it belongs to (a customer may have several)."""

    user = models.OneToOneField(
        "auth.User", on_delete=models.CASCADE, related_name="portal_membership"
    )
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="memberships")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.user} → {self.customer.external_id}"


class UsageRollup(models.Model):
    """Usage per customer, meter, UTC hour and group, maintained in the ingestion transaction.

    It answers "how much so far?" without reading events: the allowance, the budget check, the
    usage API and the dashboard sum rollups for the whole hours of a window (and read events
    only for the partial hours at its edges). Invoices still come from events; `reconcile`
    checks these sums against the events.

    Group (DESIGN 4a): when the meter is a rate card in the plan of the customer's current
    period at ingestion, the row is one combination of that price's dimension values:
    `dimension_names` is the names as JSON text ("" for none), `dim_0..dim_2` the values as
    text (NULL: absent), `group_key` a digest of both ("" for none; it is what the unique
    constraint needs, NULLs being distinct in it). A read for a meter groups by them only when
    every row of its window has the names it expects, else it reads events
    (metering.aggregation.window_group_partials); a read of the meter's total merges all rows.
    """

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="+")
    meter = models.ForeignKey(Meter, on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField()  # start of the UTC hour
    quantity = models.DecimalField(**TOTAL_QUANTITY)  # sum of quantities
    event_count = models.BigIntegerField()
    max_quantity = models.DecimalField(**QUANTITY)
    latest_at = models.DateTimeField()  # timestamp of the latest event in the hour
    latest_event_pk = models.BigIntegerField()  # tie-break for equal timestamps
    latest_quantity = models.DecimalField(**QUANTITY)
    dimension_names = models.TextField(blank=True, default="")
    dim_0 = models.TextField(null=True, blank=True)  # noqa: DJ001 - NULL: absent, as events group
    dim_1 = models.TextField(null=True, blank=True)  # noqa: DJ001 - NULL: absent, as events group
    dim_2 = models.TextField(null=True, blank=True)  # noqa: DJ001 - NULL: absent, as events group
    group_key = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "meter", "hour", "group_key"], name="rollup_one_per_hour"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id}/{self.meter_id} {self.hour:%Y-%m-%d %H}: {self.quantity}"
