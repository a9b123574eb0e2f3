"""The README's API example is true: its request, sent to the seeded demo the way the shell sends
it, gets exactly the answers the README prints, on any day; and what it says of conflicts."""

from __future__ import annotations

import importlib.util
import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from rest_framework.test import APIClient

from metering.models import UsageEvent

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLE_DAY = "2026-12-04"  # the date in the README's printed answers (its `event_id`)

pytestmark = pytest.mark.django_db


def example() -> tuple[str, list[str]]:
    """The body the README's curl command sends (with `'$DAY'` as the shell expands it, still
    unexpanded) and the answers it prints: the commented one and the one of the resend."""
    text = README.read_text()
    section = text[text.index("## The API in one example") :]
    start = section.index("```sh\n") + 6
    end = section.index("\n```", start)
    command = section[start:end]
    body = command[command.index("-d '") + 4 : command.rindex("'\n")]
    first = re.search(r"^# (\{.*\} \d{3})$", command, re.M)[1]
    rest = section[end + 4 :]
    resend = re.search(r"^```\n(\{.*\} \d{3})\n```$", rest, re.M)[1]
    return body, [first, resend]


def post(client: APIClient, body: str) -> str:
    """What `curl -s -w ' %{http_code}\\n'` prints for the answer."""
    response = client.generic(
        "POST", "/api/v1/events", body.encode(), content_type="application/json"
    )
    return f"{response.content.decode()} {response.status_code}"


@pytest.fixture
def demo_key(tmp_path) -> str:
    Group.objects.get_or_create(name="Finance")  # made by a migration; a flush may drop it
    out = io.StringIO()
    call_command("seed_demo", key_file=str(tmp_path / "demo-api-key"), stdout=out)
    return out.getvalue().strip().splitlines()[-1]


def test_the_api_example_answers_as_printed_on_any_day(demo_key):
    body, printed = example()
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {demo_key}")
    sent = body.replace("'$DAY'", day)  # the shell closes the quote, expands, reopens it

    first = post(client, sent)
    again = post(client, sent)

    assert json.loads(sent)["events"][0]["timestamp"] == f"{day}T00:00:00Z"
    assert [first, again] == [line.replace(EXAMPLE_DAY, day) for line in printed]
    assert UsageEvent.objects.filter(customer__external_id="initech").count() == 1


def test_a_conflict_is_202_in_a_batch_and_409_only_for_a_bare_event(demo_key):
    body, _ = example()
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {demo_key}")
    sent = json.loads(body.replace("'$DAY'", day))
    post(client, json.dumps(sent))
    stored = list(UsageEvent.objects.values("event_id", "quantity", "timestamp"))
    other = {**sent["events"][0], "quantity": 99}
    conflict = json.dumps(
        {
            "accepted": 0,
            "duplicates": 0,
            "conflicts": 1,
            "events": [{"event_id": f"run-{day}-step-7", "status": "conflict"}],
            "customers": {"initech": {"status": "active", "remaining_minor": None}},
        },
        separators=(",", ":"),
    )

    in_a_batch = post(client, json.dumps({"events": [other]}))
    bare = post(client, json.dumps(other))

    assert in_a_batch == f"{conflict} 202"
    assert bare == f"{conflict} 409"
    assert list(UsageEvent.objects.values("event_id", "quantity", "timestamp")) == stored


def test_the_example_customer_is_one_the_demo_fleet_leaves_alone():
    """The fleet of `make run` neither works for the README's customer nor caps it, so the
    example's `active` and `null` hold however long the demo has run."""
    spec = importlib.util.spec_from_file_location(
        "demo_agent", README.parent / "scripts" / "demo_agent.py"
    )
    demo_agent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_agent)
    body, _ = example()
    customer = json.loads(body.replace("'$DAY'", "2026-12-04"))["events"][0]["customer_id"]

    assert customer == "initech"
    assert customer not in demo_agent.FLEET_CUSTOMERS
    assert customer not in demo_agent.DEMO_CAPS
