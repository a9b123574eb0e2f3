"""`manage.py close_periods [--now ISO8601]`: the billing cycle, in this process, printed."""

from __future__ import annotations

from datetime import datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing_cycle import services


class Command(BaseCommand):
    help = (
        "Run the billing cycle as beat does, in this process (no worker needed): close due "
        "periods, send their usage summaries, finalize reviewed drafts and hand them to the "
        "billing backend; print what was done, what failed and what waits (and why)."
    )

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
        report = services.run_billing_cycle(now=at, inline=True)
        counts = report.counts()
        self.stdout.write(f"billing cycle at {at.isoformat()}")
        self.stdout.write(
            f"closed {counts['closed']} period(s), sent {counts['summaries']} usage "
            f"summary(ies), finalized {counts['finalized']} invoice(s), delivered "
            f"{counts['delivered']} invoice(s), reported {counts['usage_reports']} usage "
            f"report(s); {counts['waiting']} waiting, {counts['failed']} failure(s)"
        )
        for title, entries in (("done", report.done), ("waiting", report.waiting)):
            if entries:
                self.stdout.write(f"{title}:")
                for entry in entries:
                    self.stdout.write(f"  {entry.step:<12} {entry}")
        if report.failed:
            self.stderr.write("failed:")
            for entry in report.failed:
                self.stderr.write(f"  {entry.step:<12} {entry}")
            raise CommandError(f"{len(report.failed)} step(s) failed")
