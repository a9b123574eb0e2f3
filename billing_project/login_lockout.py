"""The page django-axes shows for a refused login (AXES_LOCKOUT_CALLABLE): 429, with the
wait in `Retry-After`, in the look of the login that was refused (admin or portal)."""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse


def locked_out_response(
    request: HttpRequest, original_response: HttpResponse | None, credentials: Any
) -> HttpResponse:
    # Every refused attempt starts the cool-off again, so the wait is the whole cool-off.
    seconds = int(settings.AXES_COOLOFF_TIME.total_seconds())
    context: dict[str, Any] = {"minutes": math.ceil(seconds / 60), "login_url": request.path}
    if request.path.startswith(reverse("admin:index")):
        context.update(admin.site.each_context(request), title="Too many failed logins")
        template = "admin/locked_out.html"
    else:
        template = "portal/locked_out.html"
    response = render(request, template, context, status=429)
    response["Retry-After"] = str(seconds)
    return response
