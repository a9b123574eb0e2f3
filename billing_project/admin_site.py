"""The back office's admin site: finance staff only, with an optional second factor.

Only active staff who are superusers or members of a group in `BILLING_ADMIN_GROUPS` (default
"Finance") may use /admin/; anyone else is sent to the admin login page, which refuses them.
With `BILLING_ADMIN_2FA` on, a user who has a confirmed TOTP device (django-otp) must also give
its current token to log in, and a session not verified by that device counts as logged out of
the admin. Users without a device log in with their password alone.

Every admin registered on the site is audited (audit/audited_admin.py): `register` puts
AuditedModelAdmin under it, so each add, change, delete and action is in the audit log with
its user, whoever wrote the admin page.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.http import Http404, HttpRequest
from django.urls import URLPattern
from django_otp import devices_for_user, user_has_device
from django_otp.forms import OTPAuthenticationFormMixin

from audit.audited_admin import AuditedModelAdmin
from billing_project.forms import BoundedTextFieldsMixin

TWO_FACTOR_LOGIN_TEMPLATE = "otp/admin111/login.html"  # django-otp's admin login page


def may_use_back_office(user: Any) -> bool:
    """Active staff who are superusers or in one of the back-office groups."""
    if not (user.is_active and user.is_staff):
        return False
    if user.is_superuser:
        return True
    return user.groups.filter(name__in=settings.BILLING_ADMIN_GROUPS).exists()


def needs_second_factor(user: Any) -> bool:
    return settings.BILLING_ADMIN_2FA and user_has_device(user, confirmed=True)


class BackOfficeLoginForm(BoundedTextFieldsMixin, AdminAuthenticationForm):
    """The admin login, refusing staff outside the back-office groups like a wrong password."""

    def confirm_login_allowed(self, user: Any) -> None:
        super().confirm_login_allowed(user)
        if not may_use_back_office(user):
            raise forms.ValidationError(
                self.error_messages["invalid_login"],
                code="invalid_login",
                params={"username": self.username_field.verbose_name},
            )


class TwoFactorBackOfficeLoginForm(OTPAuthenticationFormMixin, BackOfficeLoginForm):
    """The admin login with django-otp's token fields; the token is checked only for users
    who have a confirmed device. With a single device, that device is used without asking."""

    # A device's persistent id ("otp_totp.totpdevice/12"), a token of a few digits.
    otp_device = forms.CharField(required=False, max_length=100, widget=forms.Select)
    otp_token = forms.CharField(
        required=False,
        max_length=16,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code"}),
    )
    otp_challenge = forms.CharField(required=False, max_length=32)  # "Get OTP Challenge"

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        user = self.get_user()
        if user is not None and user_has_device(user, confirmed=True):
            self.clean_otp(user)
        return cleaned

    def _chosen_device(self, user: Any) -> Any:
        device = super()._chosen_device(user)
        if device is None:
            # Called inside clean_otp's transaction (for_verify locks the rows).
            devices = list(devices_for_user(user, for_verify=True))
            if len(devices) == 1:
                device = devices[0]
        return device


class SafeChangeListMixin:
    """A changelist whose date hierarchy out of range (`?timestamp__year=9999&...__day=31`,
    whose next day does not exist, or a year of 40 digits) is an invalid lookup, which the admin
    answers with its "invalid filter" redirect, like any other; Django raised OverflowError."""

    def get_filters(self, request: HttpRequest):
        try:
            return super().get_filters(request)  # type: ignore[misc]
        except (OverflowError, ValueError) as exc:
            raise IncorrectLookupParameters(exc) from exc


class SafeLookupsAdminMixin:
    """Mixed into every model admin the site registers (ours and third-party apps'): an object
    named in the URL that does not exist is a 404, whatever view looks it up, a changelist
    filter out of range is an invalid lookup (SafeChangeListMixin), and an action on ids that
    are no key changes nothing."""

    def response_action(self, request: HttpRequest, queryset: Any) -> Any:
        # Django filters the queryset by the posted ids as they came: "abc" for an integer key
        # raised ValueError. Ids that are no key select nothing (the admin's redirect back).
        key = self.model._meta.pk  # type: ignore[attr-defined]
        try:
            for value in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
                key.get_prep_value(key.to_python(value))
        except (ValidationError, ValueError, TypeError):
            self.message_user(  # type: ignore[attr-defined]
                request, "No such objects: nothing was changed.", messages.WARNING
            )
            return None
        return super().response_action(request, queryset)  # type: ignore[misc]

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return _safe_changelist(super().get_changelist(request, **kwargs))  # type: ignore[misc]

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None):
        # `?_to_field=` (empty) is not a field: Django would look for a field named "" and 500.
        return super().get_object(request, object_id, from_field or None)  # type: ignore[misc]

    def get_urls(self) -> list[Any]:
        # Views that third-party admins add (django-otp's device configuration and QR code)
        # fetch their object with .get(): a missing id raises DoesNotExist, answered 404 here.
        urls = super().get_urls()  # type: ignore[misc]
        for url in urls:
            if isinstance(url, URLPattern):
                url.callback = _missing_object_is_404(url.callback)
        return urls


@functools.cache
def _safe_changelist(base: type[ChangeList]) -> type[ChangeList]:
    if issubclass(base, SafeChangeListMixin):
        return base
    return type(base.__name__, (SafeChangeListMixin, base), {})


def _missing_object_is_404(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        try:
            return view(request, *args, **kwargs)
        except ObjectDoesNotExist:
            raise Http404("no such object") from None

    return wrapper


def with_safe_lookups(admin_class: type[admin.ModelAdmin]) -> type[admin.ModelAdmin]:
    """The admin class with SafeLookupsAdminMixin under it (itself if it has it already)."""
    if issubclass(admin_class, SafeLookupsAdminMixin):
        return admin_class
    return type(
        admin_class.__name__,
        (SafeLookupsAdminMixin, admin_class),
        {"__module__": admin_class.__module__, "__doc__": admin_class.__doc__},
    )


def audited(admin_class: type[admin.ModelAdmin]) -> type[admin.ModelAdmin]:
    """The admin class with AuditedModelAdmin under it (itself if it has it already)."""
    if issubclass(admin_class, AuditedModelAdmin):
        return admin_class
    return type(
        admin_class.__name__,
        (AuditedModelAdmin, admin_class),
        {"__module__": admin_class.__module__, "__doc__": admin_class.__doc__},
    )


class BillingAdminSite(admin.AdminSite):
    def register(
        self,
        model_or_iterable: Any,
        admin_class: type[admin.ModelAdmin] | None = None,
        **options: Any,
    ) -> None:
        super().register(
            model_or_iterable,
            audited(with_safe_lookups(admin_class or admin.ModelAdmin)),
            **options,
        )

    @property
    def login_form(self) -> type[AdminAuthenticationForm]:  # type: ignore[override]
        return TwoFactorBackOfficeLoginForm if settings.BILLING_ADMIN_2FA else BackOfficeLoginForm

    @property
    def login_template(self) -> str | None:  # type: ignore[override]
        return TWO_FACTOR_LOGIN_TEMPLATE if settings.BILLING_ADMIN_2FA else None

    def has_permission(self, request: HttpRequest) -> bool:
        user = request.user
        if not may_use_back_office(user):
            return False
        if not needs_second_factor(user):
            return True
        is_verified = getattr(user, "is_verified", None)  # set by django-otp's OTPMiddleware
        return bool(is_verified and is_verified())
