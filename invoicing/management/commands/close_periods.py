"""`manage.py close_periods [--now ISO8601]`: the same close as the beat task, on demand."""

from __future__ import annotations

from datetime import datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from invoicing.services import closing, invoices


class Command(BaseCommand):
    help = "Open new periods, close due periods and finalize reviewed drafts (as beat does)."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--now",
            help="act as if it were this instant (ISO 8601 with an offset), e.g. to catch up",
        )

    def handle(self, *args, now: str | None, **options) -> None:
        at = timezone.now()
        if now:
            try:
                at = datetime.fromisoformat(now)
            except ValueError:
                raise CommandError(f"--now must be ISO 8601, got {now!r}") from None
            if at.tzinfo is None:
                raise CommandError("--now needs an explicit offset, e.g. 2026-12-01T00:00:00Z")
        report = closing.close_due_periods(now=at)
        finalized = invoices.finalize_due_invoices(now=at)
        self.stdout.write(
            f"closed {len(report.closed)} period(s), finalized {len(finalized)} invoice(s), "
            f"{len(report.failed)} failure(s)"
        )
        for period_id, error in report.failed.items():
            self.stderr.write(f"  period {period_id}: {error}")
        if report.failed:
            raise CommandError(f"{len(report.failed)} period(s) failed to close")
