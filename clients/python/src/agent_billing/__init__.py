"""agent_billing: the agent-side client of the metered-billing service.

    from agent_billing import Client

    billing = Client("https://billing.example.com", api_key)
    with billing.unit_of_work("acme", minutes_meter="agent_minutes") as work:
        work.add("llm_tokens", run_agent())

Standard library only. See the README for the guarantees.
"""

from agent_billing._version import __version__
from agent_billing.client import Client, default_spool_path
from agent_billing.errors import (
    AgentBillingError,
    ApiError,
    AuthenticationError,
    BudgetExceeded,
    ClientClosed,
    InvalidEvent,
    ServiceUnavailable,
)
from agent_billing.work import UnitOfWork, current_work

__all__ = [
    "AgentBillingError",
    "ApiError",
    "AuthenticationError",
    "BudgetExceeded",
    "Client",
    "ClientClosed",
    "InvalidEvent",
    "ServiceUnavailable",
    "UnitOfWork",
    "__version__",
    "current_work",
    "default_spool_path",
]
