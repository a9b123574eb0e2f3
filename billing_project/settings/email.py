"""The e-mail provider's settings: `ANYMAIL` from the environment, which provider
`EMAIL_BACKEND` names, and whether its tracking webhook (delivery and bounce events) is
authenticated.

django-anymail authenticates a provider's webhook with HTTP basic auth when
`ANYMAIL["WEBHOOK_SECRET"]` ("user:password") is set, for every provider; some providers also
sign their webhooks, and anymail checks the signature when the provider's signing key is set.
Without either, anyone could post a forged bounce, so the webhook is only mounted with one.
"""

from __future__ import annotations

import json
import os

from django.core.exceptions import ImproperlyConfigured

ANYMAIL_BACKEND_PREFIX = "anymail.backends."

# Providers with a tracking webhook in anymail (anymail/urls.py: `<provider>/tracking/`).
TRACKING_PROVIDERS = frozenset(
    {
        "amazon_ses",
        "brevo",
        "mailersend",
        "mailgun",
        "mailjet",
        "mailtrap",
        "mandrill",
        "postal",
        "postmark",
        "resend",
        "sendgrid",
        "sendinblue",
        "sparkpost",
        "unisender_go",
    }
)
# The ANYMAIL key of the signing secret anymail verifies each signed webhook with (only
# providers whose verification needs no extra package).
SIGNING_KEYS = {
    "mailersend": "MAILERSEND_SIGNING_SECRET",
    "mailgun": "MAILGUN_WEBHOOK_SIGNING_KEY",
    "mailtrap": "MAILTRAP_TRACKING_SECRET",
    "mandrill": "MANDRILL_WEBHOOK_KEY",
    "postal": "POSTAL_WEBHOOK_KEY",
    "unisender_go": "UNISENDER_GO_API_KEY",
}


def env_anymail() -> dict[str, object]:
    """`ANYMAIL` as a JSON object in the environment variable of that name, then each
    `ANYMAIL_<NAME>` variable as `ANYMAIL["<NAME>"]` (the variables win)."""
    raw = os.environ.get("ANYMAIL", "").strip()
    options: dict[str, object] = {}
    if raw:
        try:
            options = json.loads(raw)
        except ValueError:
            options = None  # type: ignore[assignment]
        if not isinstance(options, dict):
            raise ImproperlyConfigured(
                'ANYMAIL must be a JSON object, e.g. {"POSTMARK_SERVER_TOKEN": "..."}'
            )
    for name, value in os.environ.items():
        if name.startswith("ANYMAIL_") and len(name) > len("ANYMAIL_"):
            options[name.removeprefix("ANYMAIL_")] = value
    secret = options.get("WEBHOOK_SECRET")
    secrets = [secret] if isinstance(secret, str) else secret
    if secret is not None and (
        not isinstance(secrets, list)
        or not secrets
        or not all(isinstance(s, str) and ":" in s[1:-1] for s in secrets)
    ):
        raise ImproperlyConfigured(
            "ANYMAIL_WEBHOOK_SECRET must be user:password (the basic-auth credentials in the "
            "provider's webhook URL), or a list of them in ANYMAIL"
        )
    return options


def email_provider(backend: str) -> str:
    """ "anymail.backends.postmark.EmailBackend" -> "postmark"; "" for non-anymail backends."""
    if not backend.startswith(ANYMAIL_BACKEND_PREFIX):
        return ""
    return backend.removeprefix(ANYMAIL_BACKEND_PREFIX).split(".", 1)[0]


def tracking_authenticated(provider: str, anymail: dict[str, object]) -> bool:
    """Whether anymail would refuse an unauthenticated post to this provider's webhook."""
    if anymail.get("WEBHOOK_SECRET"):
        return True
    key = SIGNING_KEYS.get(provider)
    return bool(key and anymail.get(key))


def tracking_webhook_provider(backend: str, anymail: dict[str, object], *, production: bool) -> str:
    """The provider whose tracking webhook is mounted ("" for none). In production an
    anymail provider with a tracking webhook must have it authenticated: refuse to start."""
    provider = email_provider(backend)
    if provider not in TRACKING_PROVIDERS:
        return ""
    if tracking_authenticated(provider, anymail):
        return provider
    if production:
        signing = f" or ANYMAIL_{SIGNING_KEYS[provider]}" if provider in SIGNING_KEYS else ""
        raise ImproperlyConfigured(
            f"EMAIL_BACKEND is anymail's {provider}: set ANYMAIL_WEBHOOK_SECRET "
            f"(user:password, as in the webhook URL given to the provider){signing}, or "
            "anyone can post forged delivery and bounce events"
        )
    return ""
