"""A logging filter that keeps API keys and credentials out of the logs.

Installed on the root handler (settings.LOGGING), it rewrites each record before it is
written: the message (with its arguments), the traceback text and the stack text. It masks
- API keys (`mk_<8-character prefix>_<40-character secret>`): the secret, keeping the public
  prefix that the admin shows, so the key can still be recognised;
- the value of an `Authorization` header (`Authorization: ...`, `'HTTP_AUTHORIZATION': '...'`);
- a bearer token (`Bearer <token>`).
"""

from __future__ import annotations

import logging
import re

REDACTED = "[REDACTED]"

_API_KEY = re.compile(r"(mk_[A-Za-z0-9]{8}_)[A-Za-z0-9]{40}[A-Za-z0-9]*")
_AUTHORIZATION = re.compile(r"""(authorization['"]?\s*[:=]\s*['"]?)[^'"\r\n,;}]+""", re.IGNORECASE)
_BEARER = re.compile(r"(\bbearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


def redact(text: str) -> str:
    text = _API_KEY.sub(rf"\g<1>{REDACTED}", text)
    text = _AUTHORIZATION.sub(rf"\g<1>{REDACTED}", text)
    return _BEARER.sub(rf"\g<1>{REDACTED}", text)


class RedactSecretsFilter(logging.Filter):
    """Masks secrets in place and always lets the record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: the handler reports it as usual
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
