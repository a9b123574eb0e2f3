"""/portal/billing/: how the customer pays. With the Stripe backend: the card on file, the
invoices waiting for one or whose charge was declined (with Stripe's reason), and the button
that opens Stripe Checkout (setup mode) to add a card (invoicing.stripe.payment_methods)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from invoicing.stripe import payment_methods
from invoicing.stripe.client import StripeSyncError
from metering.models import Customer
from portal.access import customer_required


@customer_required
@require_GET
def billing(request: HttpRequest, customer: Customer) -> HttpResponse:
    state = payment_methods.billing_state(customer_id=customer.pk)
    return render(
        request,
        "portal/billing.html",
        {
            "nav": "billing",
            "customer": customer,
            "stripe": settings.BILLING_BACKEND == "stripe",
            "state": state,
            "setup_done": request.GET.get("setup") == "done",
        },
    )


@customer_required
@require_POST
def add_payment_method(request: HttpRequest, customer: Customer) -> HttpResponse:
    """Open Stripe Checkout (setup mode) for this customer; back to the billing page after."""
    if settings.BILLING_BACKEND != "stripe":
        messages.error(request, "Invoices are e-mailed: no payment method is needed here.")
        return redirect("portal:billing")
    page = request.build_absolute_uri(reverse("portal:billing"))
    try:
        url = payment_methods.start_setup(
            customer_id=customer.pk,
            success_url=f"{page}?setup=done",
            cancel_url=page,
            now=timezone.now(),
        )
    except StripeSyncError:
        messages.error(
            request, "Stripe could not open the card form just now. Please try again shortly."
        )
        return redirect("portal:billing")
    return redirect(url)
