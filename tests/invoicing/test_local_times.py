"""Times in the customer's zone, named, everywhere a person reads them (metering.localtime):
the admin's period and invoice pages, the invoice document, a period's name."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.urls import reverse

from invoicing.documents import render_invoice_document
from invoicing.models import BillingPeriod, Invoice
from invoicing.services import closing, plans, subscriptions
from metering import localtime
from tests.factories import CustomerFactory
from tests.invoicing.backoffice import finance_client
from tests.invoicing.conftest import EXAMPLE_PRICES

pytestmark = pytest.mark.django_db
# globex's December in Berlin: 2026-12-01 00:00 CET is 2026-11-30 23:00 UTC.
DEC_START_UTC = datetime(2026, 11, 30, 23, 0, tzinfo=UTC)


@pytest.fixture
def finance(db):
    return finance_client()


@pytest.fixture
def globex_december(meters, settings):
    settings.BILLING_GRACE_PERIOD = 600
    globex = CustomerFactory(external_id="globex", currency="EUR", timezone="Europe/Berlin")
    plan = plans.create_plan_version(
        code="eur", name="EUR", currency="EUR", interval="month", prices=EXAMPLE_PRICES
    )
    subscriptions.subscribe_customer(customer=globex, plan=plan, now=DEC_START_UTC)
    subscriptions.current_period(customer=globex, now=DEC_START_UTC)
    return BillingPeriod.objects.get(customer=globex, start=DEC_START_UTC)


def test_the_one_home_words_an_instant_in_the_zone_named():
    berlin = localtime.zone_named("Europe/Berlin")
    assert localtime.local_time(DEC_START_UTC, berlin) == "2026-12-01 00:00 Europe/Berlin"
    end = datetime(2026, 12, 31, 23, 0, tzinfo=UTC)
    assert localtime.local_span(DEC_START_UTC, end, berlin) == (
        "2026-12-01 00:00 to 2027-01-01 00:00 (Europe/Berlin)"
    )
    assert localtime.zone_named("Not/AZone").key == "UTC"


def test_admin_shows_period_boundaries_in_the_customer_zone(finance, globex_december):
    period = globex_december
    assert str(period) == "globex 2026-12-01 00:00 to 2027-01-01 00:00 (Europe/Berlin)"
    page = finance.get(reverse("admin:invoicing_billingperiod_changelist")).content.decode()
    assert "2026-12-01 00:00 Europe/Berlin" in page
    assert "2027-01-01 00:00 Europe/Berlin" in page
    assert "Nov. 30" not in page
    url = reverse("admin:invoicing_billingperiod_change", args=[period.pk])
    assert "2026-12-01 00:00 Europe/Berlin" in finance.get(url).content.decode()


def test_invoice_admin_and_document_use_the_customer_zone(finance, globex_december):
    closing.close_due_periods(now=datetime(2027, 1, 1, 0, 0, tzinfo=UTC))
    invoice = Invoice.objects.get(period=globex_december)
    page = finance.get(reverse("admin:invoicing_invoice_changelist")).content.decode()
    assert "2026-12-01 00:00 Europe/Berlin" in page
    url = reverse("admin:invoicing_invoice_change", args=[invoice.pk])
    detail = finance.get(url).content.decode()
    assert "2027-01-01 00:00 Europe/Berlin" in detail
    # the invoice's own dates too (here: when its review period ends)
    assert localtime.local_time(invoice.finalize_after, localtime.zone_named("Europe/Berlin")) in (
        detail
    )
    document = render_invoice_document(invoice)
    assert "2026-12-01 00:00 to 2027-01-01 00:00 (Europe/Berlin)" in document
    assert "2026-11-30 23:00 to 2026-12-31 23:00 (UTC)" in document
