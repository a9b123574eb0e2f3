"""Budget caps, where a customer stands against its cap in each period, and the thresholds it
crossed. The tables keep their names from when these models lived in metering (moved with
SeparateDatabaseAndState: no data was copied)."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from metering.models import Customer

# Alert thresholds in percent of the cap when none are given: the one default of the API, the
# portal and the admin.
DEFAULT_THRESHOLDS = (50, 80, 100)


def default_thresholds() -> list[int]:
    return list(DEFAULT_THRESHOLDS)


class BudgetCap(models.Model):
    """A customer's spending cap per billing period (in minor units of its currency).

    Spend is the rated amount of the current period so far; each threshold (percent of the cap)
    alerts once per period; with `pause`, reaching the cap pauses the customer's agents until
    the cap is raised or the pause acknowledged. The per-period state is BudgetPeriodState.
    """

    class Action(models.TextChoices):
        ALERT = "alert", "Alert only"
        PAUSE = "pause", "Pause agents at the cap"

    customer = models.OneToOneField(Customer, on_delete=models.CASCADE, related_name="budget")
    cap_minor = models.BigIntegerField(null=True, blank=True, help_text="Empty: no cap.")
    thresholds = models.JSONField(default=default_thresholds)
    action = models.CharField(max_length=8, choices=Action.choices, default=Action.ALERT)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "metering_budgetcap"
        constraints = [
            models.CheckConstraint(
                condition=Q(cap_minor__isnull=True) | Q(cap_minor__gt=0), name="budget_cap_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer.external_id}: {self.cap_minor} ({self.action})"


class BudgetPeriodState(models.Model):
    """Where a customer stands against its cap in one billing period [period_start, period_end).

    The row is the lock that serializes budget checks of a customer within a period.
    """

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        WARNING = "warning", "Warning"
        PAUSED = "paused", "Paused"

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="budget_states")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.ACTIVE)
    # The spend and cap at the last check that changed something (an alert or a transition);
    # checks that change nothing are reads and leave the row alone.
    spent_minor = models.BigIntegerField(default=0)
    cap_minor = models.BigIntegerField(null=True, blank=True)
    # The last acknowledgement of the period, and the cap it covers: it lets spend go past that
    # cap (no pause, no cap credit), never past a cap set afterwards. Setting a new cap ends it
    # (acknowledged_cap_minor None) and keeps what was spent under it in
    # acknowledged_spent_minor, which the period bills whatever the new cap.
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.CharField(max_length=150, blank=True)
    acknowledged_cap_minor = models.BigIntegerField(null=True, blank=True)
    acknowledged_spent_minor = models.BigIntegerField(default=0)
    paused_at = models.DateTimeField(null=True, blank=True)
    pause_count = models.PositiveIntegerField(default=0)  # pauses this period (keys events)
    resume_count = models.PositiveIntegerField(default=0)
    checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "metering_budgetperiodstate"
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "period_start"], name="budget_state_one_per_period"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer.external_id} {self.period_start:%Y-%m-%d %H:%M}: {self.status}"


class BudgetAlert(models.Model):
    """A threshold of a cap crossed in a period: written (uniquely) before anyone is told, so
    each threshold alerts exactly once per period and cap however many checks race."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="budget_alerts")
    period_start = models.DateTimeField()
    threshold = models.PositiveSmallIntegerField(help_text="percent of the cap")
    cap_minor = models.BigIntegerField()
    spent_minor = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "metering_budgetalert"
        ordering = ["-created_at"]
        constraints = [
            # Once per period and threshold of a given cap: raising the cap re-arms the alerts.
            models.UniqueConstraint(
                fields=["customer", "period_start", "cap_minor", "threshold"],
                name="budget_alert_once_per_cap",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer.external_id} {self.threshold}% at {self.created_at:%Y-%m-%d %H:%M}"


class BudgetEvent(models.Model):
    """A pause or a resume of a customer in a period, why, and who did it: the history the
    portal shows beside the thresholds crossed. Written in the check that made the change,
    under the state's lock; `sequence` is the period's pause (or resume) count, so a change is
    recorded once however many checks race."""

    class Kind(models.TextChoices):
        PAUSED = "paused", "Paused"
        RESUMED = "resumed", "Resumed"

    class Cause(models.TextChoices):
        USAGE = "usage", "spend reached the cap"
        CAP_CHANGED = "cap_changed", "the cap was changed"
        ACKNOWLEDGED = "acknowledged", "the pause was acknowledged"
        NEW_PERIOD = "new_period", "a new billing period began"

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="budget_events")
    period_start = models.DateTimeField()
    kind = models.CharField(max_length=8, choices=Kind.choices)
    sequence = models.PositiveIntegerField()
    cause = models.CharField(max_length=16, choices=Cause.choices)
    cap_minor = models.BigIntegerField(null=True, blank=True)
    spent_minor = models.BigIntegerField()
    actor = models.CharField(max_length=150, help_text="user name, API key, or 'system'")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "period_start", "kind", "sequence"],
                name="budget_event_once",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer.external_id} {self.kind} at {self.created_at:%Y-%m-%d %H:%M}"
