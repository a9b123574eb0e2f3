"""`manage.py reconcile`: print every difference between events, aggregates, lines and
invoices; exit non-zero if there is any."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from invoicing.services.reconcile import reconcile


class Command(BaseCommand):
    help = "Check unique events == aggregates == invoice lines == invoices; non-zero on drift."

    def handle(self, *args, **options) -> None:
        problems = reconcile()
        for problem in problems:
            self.stdout.write(f"DIFF {problem}")
        if problems:
            raise CommandError(f"{len(problems)} difference(s) found")
        self.stdout.write("OK: events, aggregates, invoice lines and invoices agree")
