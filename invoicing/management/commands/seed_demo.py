"""`manage.py seed_demo`: create the demo data idempotently and print the logins and key."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from invoicing.demo import seed_invoicing_demo
from metering.demo import seed_metering_demo


class Command(BaseCommand):
    help = "Create the demo customers, meters, logins and agent key (safe to run again)."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--key-file",
            default=str(Path(settings.VAR_DIR) / "demo-api-key"),
            help="where the demo agent key is kept between runs (default: var/demo-api-key)",
        )

    def handle(self, *args, key_file: str, **options) -> None:
        if settings.PRODUCTION:
            raise CommandError("seed_demo creates known passwords; it does not run in production")
        logins = seed_metering_demo(key_file=Path(key_file))
        subscribed = seed_invoicing_demo()
        self.stdout.write("Demo data ready.")
        for line in subscribed:
            self.stdout.write(f"  {line}")
        self.stdout.write(f"  Finance staff (admin): {logins.finance} / {logins.password}")
        for login in logins.portal:
            self.stdout.write(f"  Customer portal login: {login} / {logins.password}")
        self.stdout.write("  Agent API key (service-wide):")
        self.stdout.write(logins.api_key)
