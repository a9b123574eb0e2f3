"""One extension point: what apps above metering do after an ingested batch commits.

metering must not import the apps above it, yet the ingestion response carries each
customer's budget status and a batch must trigger a cap check. budgets registers its function
here when Django starts (BudgetsConfig.ready); without it, every customer reads as active.
"""

from __future__ import annotations

from collections.abc import Callable

from metering.models import ApiKey

AfterIngest = Callable[..., dict[str, dict]]
_after_ingest: AfterIngest | None = None


def register_after_ingest(function: AfterIngest) -> None:
    global _after_ingest
    _after_ingest = function


def after_ingest(*, customer_ids: set[int], api_key: ApiKey | None = None) -> dict[str, dict]:
    """Run the registered check for the batch's customers (posted with `api_key`, which a
    pause it causes is recorded as done by); their statuses by external id."""
    if _after_ingest is None:
        return {}
    return _after_ingest(customer_ids=customer_ids, api_key=api_key)
