"""Helpers that read typed values from the environment and fail loudly on bad ones."""

from __future__ import annotations

import os
import re

from django.core.exceptions import ImproperlyConfigured


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


_RATE = re.compile(r"(\d+)\s*/\s*(\d*)\s*(s|secs?|seconds?|m|mins?|minutes?|h|hours?|d|days?)")
_RATE_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def env_rate(name: str, default: str) -> tuple[int, int] | None:
    """A request rate such as `600/min` (also `10/s`, `5000/hour`, `100/15min`) as (requests,
    seconds); `off` means no limit, returned as None."""
    raw = os.environ.get(name, default).strip().lower()
    if raw == "off":
        return None
    match = _RATE.fullmatch(raw)
    if match is None or int(match[1]) < 1 or match[2] == "0":
        raise ImproperlyConfigured(
            f"{name} must be a rate such as 600/min, 10/s or off, got {raw!r}"
        )
    return int(match[1]), int(match[2] or 1) * _RATE_SECONDS[match[3][0]]
