"""A minimal JSON-over-HTTP transport on http.client (standard library only)."""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

from agent_billing._version import __version__

USER_AGENT = f"agent-billing-python/{__version__}"


class TransportError(Exception):
    """The request got no HTTP answer: connection refused or reset, timeout, bad response."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: Any  # decoded JSON, or the text when it is not JSON

    def retry_after(self) -> float | None:
        """Seconds from a Retry-After header (delta-seconds or HTTP date), if any."""
        value = self.headers.get("retry-after")
        if not value:
            return None
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return max((moment - datetime.now(UTC)).total_seconds(), 0.0)


class Http:
    def __init__(self, base_url: str, api_key: str, *, timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._api_key = api_key
        self.timeout = timeout
        self._ssl = ssl.create_default_context() if self._https else None

    @staticmethod
    def quote(segment: str) -> str:
        return quote(segment, safe="")

    def request(self, method: str, path: str, payload: bytes | None = None) -> Response:
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            "Connection": "close",
        }
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if self._https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            conn.request(method, self._prefix + path, body=payload, headers=headers)
            raw = conn.getresponse()
            data = raw.read()
            response_headers = {name.lower(): value for name, value in raw.getheaders()}
            status = raw.status
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()
        try:
            body: Any = json.loads(data) if data else None
        except ValueError:
            body = data.decode("utf-8", "replace")
        return Response(status=status, headers=response_headers, body=body)
