"""Reads of the notifications app, for the other apps."""

from __future__ import annotations

from collections.abc import Collection

from notifications.models import Notification


def latest_usage_summaries(*, invoice_ids: Collection[int]) -> dict[int, Notification]:
    """Invoice id -> its latest usage-summary message (a resend is newer than the original),
    for the invoices that have one; one query."""
    latest: dict[int, Notification] = {}
    rows = Notification.objects.filter(
        kind=Notification.Kind.USAGE_SUMMARY, invoice_id__in=invoice_ids
    ).order_by("invoice_id", "pk")
    for notification in rows:
        assert notification.invoice_id is not None  # filtered on it
        latest[notification.invoice_id] = notification
    return latest
