"""Bearer API-key authentication for the agent API.

Unknown, revoked and expired keys get the same 401 body, so a caller learns nothing about
which keys exist. The key itself is never logged.
"""

from __future__ import annotations

from dataclasses import dataclass

from rest_framework import authentication, exceptions
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from metering.models import ApiKey
from metering.selectors import get_usable_api_key

INVALID_KEY_MESSAGE = "missing, invalid, revoked or expired API key"


@dataclass(frozen=True)
class AgentPrincipal:
    """The authenticated caller of the agent API: the key it presented."""

    api_key: ApiKey
    is_authenticated: bool = True
    is_staff: bool = False

    @property
    def is_service_wide(self) -> bool:
        return self.api_key.customer_id is None


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request) -> tuple[AgentPrincipal, ApiKey] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 200:
            raise exceptions.AuthenticationFailed(INVALID_KEY_MESSAGE)
        api_key = get_usable_api_key(plaintext=token)
        if api_key is None:
            raise exceptions.AuthenticationFailed(INVALID_KEY_MESSAGE)
        return AgentPrincipal(api_key=api_key), api_key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class HasApiKey(BasePermission):
    """Any valid key, service-wide or scoped to a customer."""

    message = INVALID_KEY_MESSAGE

    def has_permission(self, request, view) -> bool:
        return isinstance(request.user, AgentPrincipal)


class IsServiceWideKey(BasePermission):
    """Only a service-wide key (one not scoped to a customer)."""

    message = "this endpoint needs a service-wide API key"

    def has_permission(self, request, view) -> bool:
        return isinstance(request.user, AgentPrincipal) and request.user.is_service_wide


def request_api_key(request: Request) -> ApiKey:
    """The key that authenticated `request`. Views behind HasApiKey always have one; without,
    the answer is the 401 of a missing key, never a 500."""
    api_key = request.auth
    if not isinstance(api_key, ApiKey):
        raise exceptions.NotAuthenticated(INVALID_KEY_MESSAGE)
    return api_key
