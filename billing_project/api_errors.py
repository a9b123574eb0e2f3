"""The API's one exception handler: every error answered in the one shape.

A DomainError (billing_project/errors.py) is answered with its status, body and headers.
DRF's own exceptions become one first: authentication (401, the same body for every bad key),
throttling (429 with Retry-After in whole seconds), and the rest (parsing, permissions, 404,
405, 415, validation as 422) with their messages by field. A database that cannot be reached
is a 503 with Retry-After. Anything else is logged and answered 500 with no internals shown.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import InterfaceError, OperationalError
from drf_spectacular.utils import extend_schema_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from billing_project.errors import (
    DomainError,
    ErrorItem,
    InvalidApiKey,
    RateLimited,
    ServiceUnavailable,
)
from metering.authentication import INVALID_KEY_MESSAGE

logger = logging.getLogger(__name__)
DATABASE_RETRY_AFTER = 5  # seconds


@extend_schema_serializer(component_name="ErrorItem")
class ErrorItemOutput(serializers.Serializer):
    index = serializers.IntegerField(allow_null=True)
    field = serializers.CharField(allow_null=True)
    message = serializers.CharField()


class ErrorOutput(serializers.Serializer):  # the error body, in the API schema
    # DRF's metaclass takes declared fields off the class, so Serializer.errors stays.
    errors = ErrorItemOutput(many=True)  # type: ignore[assignment]  # the stubs miss that


def exception_handler(exc: Exception, context: dict) -> Response | None:
    error = as_domain_error(exc, context)
    if error is None:
        return None
    set_rollback()
    response = Response(error.body(), status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    return response


def as_domain_error(exc: Exception, context: dict) -> DomainError | None:
    """The exception as the client is told it; None for an unexpected one (a 500)."""
    if isinstance(exc, DomainError):
        return exc
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        return InvalidApiKey(INVALID_KEY_MESSAGE)
    if isinstance(exc, exceptions.Throttled):
        return RateLimited(exc.wait)  # type: ignore[attr-defined]  # DRF sets it; the stubs omit it
    if isinstance(exc, OperationalError | InterfaceError):
        # The database is unreachable (restarting, failing over): nothing was committed, so
        # the client should retry the same request; say so instead of a bare 500.
        logger.warning("database unavailable: %s", type(exc).__name__)
        return ServiceUnavailable(DATABASE_RETRY_AFTER)
    response = drf_exception_handler(exc, context)  # DRF's exceptions, Http404, PermissionDenied
    if response is None:
        return None
    data = response.data
    if isinstance(data, dict) and set(data) == {"detail"}:
        data = data["detail"]
    if isinstance(exc, exceptions.ValidationError):
        response.status_code = status.HTTP_422_UNPROCESSABLE_ENTITY  # the API's status for it
    return FrameworkError(
        status=response.status_code,
        code=getattr(exc, "default_code", "error"),
        details=_flatten(data),
        headers={k: v for k, v in response.items() if k.lower() != "content-type"},
    )


class FrameworkError(DomainError):
    """One of DRF's (or Django's) exceptions, as the client is told it."""

    def __init__(
        self, *, status: int, code: str, details: list[ErrorItem], headers: dict[str, str]
    ) -> None:
        super().__init__(details=details, headers=headers)
        self.status = status
        self.code = code


def _flatten(detail: Any, field: str | None = None) -> list[ErrorItem]:
    if isinstance(detail, dict):
        out: list[ErrorItem] = []
        for key, value in detail.items():
            if isinstance(key, int) and field is not None:  # an item of a list: "prices[1]"
                out.extend(_flatten(value, f"{field}[{key}]"))
                continue
            name = None if key == "non_field_errors" else str(key)
            if name is None:
                out.extend(_flatten(value, field))
                continue
            out.extend(_flatten(value, name if field is None else f"{field}.{name}"))
        return out
    if isinstance(detail, list):
        return [item for value in detail for item in _flatten(value, field)]
    return [ErrorItem(None, field, str(detail))]
