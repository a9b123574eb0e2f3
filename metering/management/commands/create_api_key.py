"""`manage.py create_api_key NAME [--customer EXTERNAL_ID]`: print a new key once, last line."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from metering import services
from metering.models import Customer


class Command(BaseCommand):
    help = "Create an API key (service-wide, or scoped with --customer) and print it once."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name", help="a label for the key, e.g. the agent fleet's name")
        parser.add_argument(
            "--customer", metavar="EXTERNAL_ID", help="scope the key to one customer"
        )

    def handle(self, *args, name: str, customer: str | None, **options) -> None:
        scoped = None
        if customer is not None:
            scoped = Customer.objects.filter(external_id=customer).first()
            if scoped is None:
                raise CommandError(f"no customer with external id {customer!r}")
        api_key, plaintext = services.create_api_key(name=name, customer=scoped)
        scope = f"customer {customer}" if scoped else "service-wide"
        self.stderr.write(f"Created key {api_key.prefix}… ({scope}). It is shown only once:")
        self.stdout.write(plaintext)
