"""One error shape for the whole API: `{"errors": [{"index", "field", "message"}, ...]}`.

DRF's own exceptions (authentication, permissions, parsing, throttling, 404, 405) are mapped
to that shape; anything unexpected is logged and answered 500 with no internals shown. A 429
carries `Retry-After` in whole seconds.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import InterfaceError, OperationalError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from metering.authentication import INVALID_KEY_MESSAGE

logger = logging.getLogger(__name__)
DATABASE_RETRY_AFTER = 5  # seconds


def error_body(message: str, *, field: str | None = None, index: int | None = None) -> dict:
    return {"errors": [{"index": index, "field": field, "message": message}]}


def throttled_response(wait: int | None) -> Response:
    """429 for a key over its rate limit; `wait` is whole seconds (DRF rounds it up)."""
    message = "rate limit exceeded for this API key"
    if wait is None:
        return Response(error_body(message), status=status.HTTP_429_TOO_MANY_REQUESTS)
    response = Response(
        error_body(f"{message}: retry in {wait} seconds"), status=status.HTTP_429_TOO_MANY_REQUESTS
    )
    response["Retry-After"] = str(wait)
    return response


def _flatten(detail: Any, field: str | None = None) -> list[dict[str, Any]]:
    if isinstance(detail, dict):
        out: list[dict[str, Any]] = []
        for key, value in detail.items():
            name = None if key == "non_field_errors" else str(key)
            out.extend(_flatten(value, name if field is None else f"{field}.{name}"))
        return out
    if isinstance(detail, list):
        return [item for value in detail for item in _flatten(value, field)]
    return [{"index": None, "field": field, "message": str(detail)}]


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        response = Response(
            error_body(INVALID_KEY_MESSAGE, field="authorization"),
            status=status.HTTP_401_UNAUTHORIZED,
        )
        response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response
    if isinstance(exc, exceptions.Throttled):
        return throttled_response(exc.wait)
    if isinstance(exc, OperationalError | InterfaceError):
        # The database is unreachable (restarting, failing over): nothing was committed, so
        # the client should retry the same request; say so instead of a bare 500.
        logger.warning("database unavailable: %s", type(exc).__name__)
        response = Response(
            error_body("the service is briefly unavailable; retry the same request"),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
        response["Retry-After"] = str(DATABASE_RETRY_AFTER)
        return response
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    data = response.data
    if isinstance(data, dict) and set(data) == {"detail"}:
        data = data["detail"]
    response.data = {"errors": _flatten(data)}
    return response
