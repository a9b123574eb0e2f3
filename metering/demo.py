"""Demo data for the embedded default: idempotent, so the run command can call it every time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth.models import Group, User
from django.db import transaction

from metering import selectors, services
from metering.models import Customer, Meter, PortalMembership

DEMO_METERS = [
    ("agent_tasks", "Agent tasks", "task", Meter.Aggregation.COUNT),
    ("llm_tokens", "LLM tokens", "token", Meter.Aggregation.SUM),
    ("agent_minutes", "Agent minutes", "minute", Meter.Aggregation.SUM),
]
DEMO_CUSTOMERS = [
    # external id, name, currency, time zone, portal login
    ("acme", "Acme Robotics", "USD", "America/New_York", "acme"),
    ("globex", "Globex Research", "EUR", "Europe/Berlin", "globex"),
    # The README's API example: no budget cap, and the demo agent fleet never works for it,
    # so the example's answers are the same on every machine.
    ("initech", "Initech Labs", "USD", "UTC", "initech"),
]
FINANCE_LOGIN = "finance"
# Demo-only passwords, printed by the run command; seed_demo refuses to run in production.
DEMO_PASSWORD = "demo-password-1"  # noqa: S105


@dataclass
class DemoLogins:
    finance: str
    portal: list[str]
    password: str
    api_key: str


@transaction.atomic
def seed_metering_demo(*, key_file: Path) -> DemoLogins:
    """Create (or leave as they are) the demo meters, customers, logins and agent key.

    The agent key's plaintext is kept in `key_file` (the demo's var/ folder, never committed)
    so a second run can print it again; the database still holds only its hash.
    """
    for code, name, unit, aggregation in DEMO_METERS:
        Meter.objects.get_or_create(
            code=code, defaults={"name": name, "unit": unit, "aggregation": aggregation}
        )
    finance_group = Group.objects.get(name="Finance")
    finance = _user(FINANCE_LOGIN, email="finance@operator.example", staff=True)
    finance.groups.add(finance_group)

    portal_logins = []
    for external_id, name, currency, tz, login in DEMO_CUSTOMERS:
        customer, _ = Customer.objects.get_or_create(
            external_id=external_id,
            defaults={
                "name": name,
                "currency": currency,
                "timezone": tz,
                "emails": [f"billing@{external_id}.example"],
            },
        )
        user = _user(login, email=f"{login}@{external_id}.example", staff=False)
        PortalMembership.objects.get_or_create(user=user, defaults={"customer": customer})
        portal_logins.append(login)

    plaintext = key_file.read_text().strip() if key_file.exists() else ""
    if not plaintext or selectors.get_usable_api_key(plaintext=plaintext) is None:
        _, plaintext = services.create_api_key(name="demo agent fleet")
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(plaintext + "\n")
        key_file.chmod(0o600)
    return DemoLogins(
        finance=FINANCE_LOGIN, portal=portal_logins, password=DEMO_PASSWORD, api_key=plaintext
    )


def _user(username: str, *, email: str, staff: bool) -> User:
    user, created = User.objects.get_or_create(
        username=username, defaults={"email": email, "is_staff": staff}
    )
    if created:
        user.set_password(DEMO_PASSWORD)
        user.save(update_fields=["password"])
    return user
