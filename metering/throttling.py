"""Per-key rate limits for the agent API, counted in Django's cache so that every web process
(and every machine, with Redis) shares one count.

Each API key has a counter per scope and fixed window (`BILLING_RATE_LIMITS`: `events` for
ingestion, `reads` for GET on the other endpoints, `writes` for their POST/PUT), keyed by the
key's id, never its text. A request over the limit is answered 429 with `Retry-After`, the
whole seconds until the window ends (billing_project/api_errors.py renders the body). When the cache
cannot be reached the request is let through and the failure logged: a cache outage must
never stop ingestion.
"""

from __future__ import annotations

import logging
import math
import time

from django.conf import settings
from django.core.cache import cache
from rest_framework.permissions import SAFE_METHODS
from rest_framework.throttling import BaseThrottle

from metering.models import ApiKey

logger = logging.getLogger(__name__)


def rate_limit_scope(request, view) -> str:
    """The view's own scope (`rate_limit_scope`), else `reads` or `writes` by method."""
    scope = getattr(view, "rate_limit_scope", None)
    if scope:
        return scope
    return "reads" if request.method in SAFE_METHODS else "writes"


class ApiKeyRateThrottle(BaseThrottle):
    """A fixed-window counter per (scope, API key id): `cache.add` starts a window's count at 0
    and `cache.incr` counts the request (one atomic INCR on Redis)."""

    def __init__(self) -> None:
        self.wait_seconds: int | None = None

    def allow_request(self, request, view) -> bool:
        api_key = request.auth
        if not isinstance(api_key, ApiKey):
            return True  # unauthenticated: refused by the permission check, not counted
        scope = rate_limit_scope(request, view)
        rate = settings.BILLING_RATE_LIMITS.get(scope)
        if rate is None:
            return True
        limit, seconds = rate
        now = time.time()
        window = int(now // seconds)
        key = f"ratelimit:{scope}:{api_key.pk}:{window}"
        try:
            cache.add(key, 0, timeout=seconds + 1)
            count = cache.incr(key)
        except Exception as exc:  # any cache failure: let the request through, and say so
            logger.warning(
                "rate limit not checked for API key %s: cache error %s: %s",
                api_key.pk,
                type(exc).__name__,
                exc,
            )
            return True
        if count <= limit:
            return True
        self.wait_seconds = max(1, math.ceil((window + 1) * seconds - now))
        return False

    def wait(self) -> int | None:
        return self.wait_seconds
