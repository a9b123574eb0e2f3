"""Requests refused before any view, session lookup or query sees them: the one place for the
rules that hold for every URL of the site.

- A NUL byte cannot be stored or compared by PostgreSQL (psycopg refuses it in any parameter),
  and no URL, query value or header of this site contains one: a NUL in the path is 404, in
  the query string or a header 400. A cookie with a NUL is dropped (the browser is then simply
  signed out), so a corrupted cookie never locks anyone out.
- Only whole bodies are read. A body of unknown length (`Transfer-Encoding`, which the WSGI
  servers hand to Django as an empty body) is 411; a `Content-Length` that is not a number is
  400; over `BILLING_MAX_BODY_BYTES` is 413 before anything is read; a body that ends before
  its `Content-Length` (the client stopped sending) is 400, so no view acts on part of one.

API paths (`/api/`) get the API's JSON error body; every other path a plain-text page.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, UnreadablePostError

from billing_project.errors import (
    BadRequest,
    DomainError,
    LengthRequired,
    NotFound,
    RequestTooLarge,
    error_response,
)

API_PREFIX = "/api/"
NUL = "\x00"


def _refusal(request: HttpRequest, error: DomainError) -> HttpResponse:
    if request.path_info.startswith(API_PREFIX):
        response = error_response(error)
    else:
        response = HttpResponse(
            str(error) + "\n", status=error.status, content_type="text/plain; charset=utf-8"
        )
    response["Content-Length"] = str(len(response.content))
    return response


def _has_nul_in_query(request: HttpRequest) -> bool:
    return any(
        NUL in key or NUL in value for key, values in request.GET.lists() for value in values
    )


def _has_nul_in_headers(request: HttpRequest) -> bool:
    return any(
        NUL in value
        for name, value in request.META.items()
        if isinstance(value, str) and (name.startswith("HTTP_") or name.startswith("CONTENT_"))
    )


def _drop_cookies_with_nul(request: HttpRequest) -> None:
    cookies = request.COOKIES
    if any(NUL in name or NUL in value for name, value in cookies.items()):
        request.COOKIES = {
            name: value for name, value in cookies.items() if NUL not in name and NUL not in value
        }


def refuse(request: HttpRequest) -> HttpResponse | None:
    """The response for a request no view may see, or None for one that may go on."""
    if NUL in request.path_info or NUL in request.path:
        return _refusal(request, NotFound("not found"))
    if _has_nul_in_query(request):
        return _refusal(request, BadRequest("a query parameter contains a NUL byte", field="query"))
    if _has_nul_in_headers(request):
        return _refusal(
            request, BadRequest("a request header contains a NUL byte", field="headers")
        )
    _drop_cookies_with_nul(request)
    return _refuse_partial_body(request)


def _refuse_partial_body(request: HttpRequest) -> HttpResponse | None:
    if "HTTP_TRANSFER_ENCODING" in request.META:
        return _refusal(
            request,
            LengthRequired("send the body with a Content-Length (chunked bodies are refused)"),
        )
    raw_length = request.META.get("CONTENT_LENGTH") or ""
    if not raw_length.strip():
        return None
    if not (raw_length.strip().isascii() and raw_length.strip().isdigit()):
        return _refusal(request, BadRequest("Content-Length must be a number of bytes"))
    declared = int(raw_length)
    limit = settings.BILLING_MAX_BODY_BYTES
    if declared > limit:
        return _refusal(request, RequestTooLarge(f"body must be at most {limit} bytes"))
    if not declared:
        return None
    try:
        complete = len(request.body) == declared
    except UnreadablePostError:  # the connection broke while the body was read
        complete = False
    if not complete:
        return _refusal(
            request, BadRequest(f"the body ended before its Content-Length of {declared} bytes")
        )
    return None


class RequestGuardMiddleware:
    """First in the chain after the security middleware (see `refuse`)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return refuse(request) or self.get_response(request)
