"""The one base of the errors a client is told about, and the one shape they are told in.

A service, a view or a middleware raises a DomainError (a subclass of it) with what went
wrong; nothing else builds an error body. The API's exception handler
(billing_project/api_errors.py) answers it with `status` and the body of DESIGN section 3:

    {"errors": [{"index": <event index or null>, "field": <name or null>, "message": "..."}]}

`code` names the kind of error for logs and callers that branch on it; it is not in the body.
Code outside DRF (a middleware) answers with `error_response`, byte for byte the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

from django.http import HttpResponse


class ErrorDetail(Protocol):
    """One problem: the event's index in a batch (or None), the field at fault (or None)."""

    @property
    def index(self) -> int | None: ...

    @property
    def field(self) -> str | None: ...

    @property
    def message(self) -> str: ...


@dataclass(frozen=True, slots=True)
class ErrorItem:
    index: int | None
    field: str | None
    message: str


class DomainError(Exception):
    """A request refused for a reason the client can act on; nothing was changed.

    Give a message (and the field it is about), or `fields` (field -> message) for several
    fields, or `details` (items with index, field and message, e.g. per event of a batch).
    Subclasses set `status` and `code`; `headers` go on the response (e.g. Retry-After).
    """

    status: int = HTTPStatus.UNPROCESSABLE_ENTITY
    code: str = "invalid"

    def __init__(
        self,
        message: str = "",
        *,
        field: str | None = None,
        fields: Mapping[str, str] | None = None,
        details: Iterable[ErrorDetail] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if details is not None:
            items = [ErrorItem(d.index, d.field, d.message) for d in details]
        elif fields is not None:
            items = [ErrorItem(None, name, text) for name, text in fields.items()]
        else:
            items = [ErrorItem(None, field, message)]
        super().__init__(message or "; ".join(_describe(item) for item in items))
        self.field = field
        self.details = items
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The response body, keys in the documented order."""
        return error_body(self.details)


def error_body(details: Iterable[ErrorDetail]) -> dict[str, Any]:
    return {"errors": [{"index": d.index, "field": d.field, "message": d.message} for d in details]}


def error_response(error: DomainError) -> HttpResponse:
    """The error as a plain Django response, for code outside DRF (middleware): compact JSON
    as DRF renders it, so a client cannot tell which layer refused the request."""
    content = json.dumps(error.body(), ensure_ascii=False, separators=(",", ":"))
    response = HttpResponse(content, status=error.status, content_type="application/json")
    for name, value in error.headers.items():
        response[name] = value
    return response


def _describe(item: ErrorItem) -> str:
    return f"{item.field}: {item.message}" if item.field else item.message


# --- Errors of the request itself, the same for every endpoint ------------------------------


class BadRequest(DomainError):
    """The request cannot be read (400)."""

    status = HTTPStatus.BAD_REQUEST
    code = "bad_request"


class InvalidApiKey(DomainError):
    """Missing, unknown, revoked or expired key (401): one answer for all, so a caller learns
    nothing about which keys exist."""

    status = HTTPStatus.UNAUTHORIZED
    code = "invalid_api_key"

    def __init__(self, message: str) -> None:
        super().__init__(
            message, field="authorization", headers={"WWW-Authenticate": 'Bearer realm="api"'}
        )


class NotFound(DomainError):
    """No such resource (404): a path no URL can name (one with a NUL byte)."""

    status = HTTPStatus.NOT_FOUND
    code = "not_found"


class LengthRequired(DomainError):
    """A body of unknown length (411): chunked bodies are refused, never read as empty."""

    status = HTTPStatus.LENGTH_REQUIRED
    code = "length_required"


class RequestTooLarge(DomainError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "too_large"


class UnsupportedContentType(DomainError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    code = "unsupported_content_type"


class RateLimited(DomainError):
    """Over the key's rate limit (429); `wait` is whole seconds until it may send again."""

    status = HTTPStatus.TOO_MANY_REQUESTS
    code = "rate_limited"

    def __init__(self, wait: int | None) -> None:
        message = "rate limit exceeded for this API key"
        if wait is None:
            super().__init__(message)
        else:
            super().__init__(
                f"{message}: retry in {wait} seconds", headers={"Retry-After": str(wait)}
            )


class ServiceUnavailable(DomainError):
    """The database is briefly unreachable (503): nothing was committed, retry the same
    request after `retry_after` seconds."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "unavailable"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "the service is briefly unavailable; retry the same request",
            headers={"Retry-After": str(retry_after)},
        )
