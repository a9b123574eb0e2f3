"""Isolation: every portal page and download is looked up through the logged-in user's customer.

Customer B, logged in, asks for every URL that names an object of customer A and gets 404 for
each; anonymous requests are sent to the login page; a staff login without a membership sees
no customer data.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from budgets import services as budget_services
from budgets.models import BudgetAlert, BudgetCap
from invoicing.models import BillingPeriod
from tests.portal.conftest import build_history

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_customers(acme, globex, service_key):
    """A (acme) and B (globex), each with a draft invoice and current usage; A has alerts."""
    a_invoice = build_history(acme, service_key[0], prefix="a")
    b_invoice = build_history(globex, service_key[0], prefix="b")
    budget_services.set_budget_cap(
        customer=acme.customer,
        cap_minor=600,
        thresholds=[50, 80],
        action="alert",
        now=timezone.now(),
    )
    assert BudgetAlert.objects.filter(customer=acme.customer).count() == 2
    return acme, a_invoice, globex, b_invoice


def urls_naming(invoice, periods) -> list[str]:
    """Every portal URL that names one of a customer's objects."""
    urls = [
        f"/portal/invoices/{invoice.pk}/",
        f"/portal/invoices/{invoice.pk}/document/",
        f"/portal/invoices/{invoice.pk}/document/?download=1",
    ]
    urls += [f"/portal/export/?period={period.pk}" for period in periods]
    return urls


OWN_PAGES = [
    "/portal/",
    "/portal/?days=7&property=model",
    "/portal/breakdown/?property=agent_id",
    "/portal/breakdown/?property=model&fragment=1",
    "/portal/invoices/",
    "/portal/export/",
    "/portal/budget/",
]


def test_customer_b_gets_404_for_every_url_of_customer_a(two_customers, client):
    acme, a_invoice, globex, _ = two_customers
    a_periods = list(BillingPeriod.objects.filter(customer=acme.customer))
    assert len(a_periods) >= 2
    client.force_login(globex.user)
    urls = urls_naming(a_invoice, a_periods)
    for url in urls:
        response = client.get(url)
        assert response.status_code == 404, url
        assert acme.customer.name.encode() not in response.content
    # and for a period or invoice that does not exist at all: the same answer
    assert client.get("/portal/invoices/999999/").status_code == 404
    assert client.get("/portal/export/?period=999999").status_code == 404


def test_customer_b_sees_its_own_pages_and_nothing_of_a(two_customers, client):
    acme, _, globex, b_invoice = two_customers
    client.force_login(globex.user)
    b_periods = list(BillingPeriod.objects.filter(customer=globex.customer))
    for url in OWN_PAGES + urls_naming(b_invoice, b_periods):
        response = client.get(url)
        assert response.status_code == 200, url
        body = b"".join(response.streaming_content) if response.streaming else response.content
        assert acme.customer.name.encode() not in body, url
        assert b"a-t1" not in body and b"a-old" not in body, url  # A's event ids
    budget = client.get("/portal/budget/")
    assert budget.context["alerts"] == []
    invoices = client.get("/portal/invoices/")
    assert [i.pk for i in invoices.context["page"].object_list] == [b_invoice.pk]


def test_a_post_of_b_never_touches_a(two_customers, client):
    acme, _, globex, _ = two_customers
    before = BudgetCap.objects.get(customer=acme.customer)
    client.force_login(globex.user)
    response = client.post(
        "/portal/budget/", {"cap": "20.00", "thresholds": "50, 100", "action": "pause"}
    )
    assert response.status_code == 302
    after = BudgetCap.objects.get(customer=acme.customer)
    assert (after.cap_minor, after.thresholds, after.action) == (
        before.cap_minor,
        before.thresholds,
        before.action,
    )
    assert BudgetCap.objects.get(customer=globex.customer).cap_minor == 2000  # EUR cents


def every_portal_url(invoice, periods) -> list[str]:
    return OWN_PAGES + urls_naming(invoice, periods) + ["/portal/budget/acknowledge/"]


def test_anonymous_requests_are_redirected_to_login(two_customers, client):
    acme, a_invoice, _, _ = two_customers
    periods = list(BillingPeriod.objects.filter(customer=acme.customer))
    for url in every_portal_url(a_invoice, periods):
        for method in (client.get, client.post):
            if method is client.post and "?" in url:
                continue
            response = method(url)
            assert response.status_code == 302, url
            assert response["Location"].startswith("/portal/login/?next="), url
    assert client.get("/").headers["Location"] == "/portal/"
    assert client.get("/portal/login/").status_code == 200


@pytest.mark.parametrize("superuser", [False, True])
def test_staff_without_membership_gets_no_customer_data(two_customers, client, superuser):
    acme, a_invoice, _, _ = two_customers
    staff = User.objects.create_user(
        username="finance", password="x" * 12, is_staff=True, is_superuser=superuser
    )
    client.force_login(staff)
    periods = list(BillingPeriod.objects.filter(customer=acme.customer))
    for url in every_portal_url(a_invoice, periods):
        response = client.get(url)
        assert response.status_code == 403, url
        assert acme.customer.name.encode() not in response.content, url
        assert b"No portal access" in response.content
    response = client.post("/portal/budget/", {"cap": "1", "thresholds": "50", "action": "pause"})
    assert response.status_code == 403
    assert BudgetCap.objects.get(customer=acme.customer).cap_minor == 600
