"""The exceptions of the client. All derive from AgentBillingError."""

from __future__ import annotations

from typing import Any


class AgentBillingError(Exception):
    """Base class of every error raised by agent_billing."""


class InvalidEvent(AgentBillingError, ValueError):
    """An event was refused before it was spooled (the service would refuse it too)."""


class ClientClosed(AgentBillingError, RuntimeError):
    """The client was closed; create a new one to record more usage."""


class ApiError(AgentBillingError):
    """The service answered with an unexpected HTTP status."""

    def __init__(self, message: str, *, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class AuthenticationError(ApiError):
    """401/403: the API key is missing, unknown, revoked, expired or not allowed."""


class ServiceUnavailable(AgentBillingError):
    """The service could not be reached (network error, timeout or 5xx)."""


class BudgetExceeded(AgentBillingError):
    """The customer is paused at its budget cap: stop starting new work.

    `allowance` is the allowance the decision was based on (at least `status`).
    """

    def __init__(self, customer_id: str, allowance: dict[str, Any]) -> None:
        remaining = allowance.get("remaining_minor")
        super().__init__(
            f"customer {customer_id!r} is paused at its budget cap "
            f"(status={allowance.get('status')!r}, remaining_minor={remaining!r})"
        )
        self.customer_id = customer_id
        self.allowance = allowance
