"""The CSV export is safe to open in a spreadsheet (OWASP's advice on CSV injection): a cell
that begins with =, +, -, @, a tab or a carriage return (or a single quote, so the rule can be
undone) gets one single quote in front; plain decimal numbers stay numbers; everything else is
exactly as stored. The export's dates are range-checked."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.utils import timezone

from metering.models import UsageEvent
from portal.spreadsheet import spreadsheet_safe
from tests.portal.conftest import make_portal_customer, record, subscribe
from tests.security.hostile.world import table_counts

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ('=HYPERLINK("http://x.example")', '\'=HYPERLINK("http://x.example")'),
        ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("'already quoted", "''already quoted"),
        ("-", "'-"),
        ("-42", "-42"),
        ("+3.5", "+3.5"),
        ("-0.000001", "-0.000001"),
        ("1234.5", "1234.5"),
        ("2026-01-31T12:00:00Z", "2026-01-31T12:00:00Z"),
        ('{"agent_id":"=1"}', '{"agent_id":"=1"}'),
        ("run-42-step-7", "run-42-step-7"),
        ("", ""),
    ],
)
def test_cells_that_a_spreadsheet_would_run_get_one_quote(cell, written):
    assert spreadsheet_safe(cell) == written
    if written != cell:  # reversible: drop the one quote that was added
        assert written[1:] == cell


@pytest.fixture
def hostile_usage(portal_meters, service_key):
    portal = make_portal_customer("=cmd|calc", tz="UTC", username="formula-user")
    now = timezone.now()
    subscribe(portal, since=now - timedelta(days=1))
    at = now - timedelta(minutes=30)
    ids = ["=1+1", "+SUM(A1)", "-2+3", "@A1", "'q", "-42", "ok-1"]
    record(
        service_key[0],
        portal.customer,
        [(event_id, "agent_tasks", None, at, {"note": "=HYPERLINK(1)"}) for event_id in ids],
        now=now,
    )
    return portal


def test_the_export_writes_neutralised_cells_and_keeps_numbers(hostile_usage, client):
    client.force_login(hostile_usage.user)
    response = client.get(f"/portal/export/?period={hostile_usage.period.pk}")

    body = b"".join(response.streaming_content).decode()
    rows = list(csv.reader(io.StringIO(body)))
    assert rows[0] == ["event_id", "customer_id", "meter", "quantity", "timestamp", "properties"]
    assert sorted((row[0], row[1], row[2], row[3], row[5]) for row in rows[1:]) == sorted(
        (event_id, "'=cmd|calc", "agent_tasks", "1", '{"note":"=HYPERLINK(1)"}')
        for event_id in ["'=1+1", "'+SUM(A1)", "'-2+3", "'@A1", "''q", "-42", "ok-1"]
    )
    stored = set(UsageEvent.objects.values_list("event_id", flat=True))
    assert stored == {"=1+1", "+SUM(A1)", "-2+3", "@A1", "'q", "-42", "ok-1"}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("start=9999-12-31&end=9999-12-31", "Enter a day from 2000-01-01 to 2100-12-31."),
        ("start=2026-01-01&end=9999-12-31", "Enter a day from 2000-01-01 to 2100-12-31."),
        ("start=0001-01-01&end=2026-01-01", "Enter a day from 2000-01-01 to 2100-12-31."),
        ("start=1999-12-31&end=2000-01-01", "Enter a day from 2000-01-01 to 2100-12-31."),
        ("period=99999999999999999999", "Ensure this value is less than or equal to"),
        ("period=9223372036854775808", "Ensure this value is less than or equal to"),
    ],
)
def test_export_dates_and_ids_out_of_range_are_400(hostile_usage, client, query, message):
    client.force_login(hostile_usage.user)
    before = table_counts()

    response = client.get(f"/portal/export/?{query}")

    assert response.status_code == 400
    assert message in response.content.decode()
    assert table_counts() == before


def test_the_last_and_first_days_allowed_export(hostile_usage, client):
    client.force_login(hostile_usage.user)

    last = client.get("/portal/export/?start=2100-12-31&end=2100-12-31")
    first = client.get("/portal/export/?start=2000-01-01&end=2000-01-01")
    biggest_id = client.get("/portal/export/?period=9223372036854775807")

    assert (last.status_code, first.status_code, biggest_id.status_code) == (200, 200, 404)
    assert b"".join(last.streaming_content).decode().count("\n") == 1  # the header only
