"""Who may see what: every portal view works for exactly one customer, the logged-in user's.

Views never take a customer from the URL or the query string. They receive the customer of the
user's PortalMembership and look every object up through it, so another customer's ids answer
404 and a login without a membership (finance staff, say) sees no customer data at all.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponseBase
from django.shortcuts import render

from metering.models import Customer, PortalMembership

PortalView = Callable[..., HttpResponseBase]


def customer_of(user: Any) -> Customer | None:
    """The customer a user belongs to in the portal, or None (anonymous, staff, no membership)."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return None
    membership = PortalMembership.objects.select_related("customer").filter(user_id=user.pk).first()
    return membership.customer if membership is not None else None


def customer_required(view: PortalView) -> PortalView:
    """Anonymous: redirect to the portal login. Logged in without a membership: 403 page.
    Otherwise call `view(request, customer, *args, **kwargs)`."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        customer = customer_of(request.user)
        if customer is None:
            return render(request, "portal/no_access.html", status=403)
        return view(request, customer, *args, **kwargs)

    return wrapper
