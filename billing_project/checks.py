"""Start-up checks of the deployment: a web process never serves pages it would answer with 500.

In production the static files storage is whitenoise's manifest storage: `{% static %}` looks
each file up in the manifest `collectstatic` writes (STATIC_ROOT/staticfiles.json) and raises
for a file it does not list, so without `collectstatic`, or with a manifest left by an older
release, every page that names that file answers 500. `static_manifest_errors` finds that
before the first request: `manage.py check --deploy` reports it, and the WSGI and ASGI
applications refuse to load (`refuse_to_start_without_collected_static`), so gunicorn's
workers fail to boot with the reason instead of serving 500s.

`stripe_key_prefix_errors` (billing_project.E002, every `manage.py` command and the same
refusal at load) keeps STRIPE_KEY_PREFIX short enough for Stripe's identifier limits.
"""

from __future__ import annotations

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

STATIC_MANIFEST_ERROR = "billing_project.E001"
COLLECTSTATIC = "python manage.py collectstatic --no-input"
_LISTED = 5  # file names quoted in the message, at most


def static_manifest_errors() -> list[checks.Error]:
    """The manifest's problems: missing, unreadable, or not naming every static file of this
    release. No errors when the storage keeps no manifest (development and tests)."""
    from django.apps import apps
    from django.conf import STATICFILES_STORAGE_ALIAS
    from django.contrib.staticfiles.finders import get_finders
    from django.contrib.staticfiles.storage import ManifestFilesMixin
    from django.core.files.storage import storages

    try:
        storage = storages[STATICFILES_STORAGE_ALIAS]  # the instance {% static %} uses
    except ValueError as exc:  # the manifest is there but is not one collectstatic wrote
        return [
            _error(
                f"the static files manifest cannot be read ({exc}): every page with a static "
                "file would answer 500"
            )
        ]
    if not isinstance(storage, ManifestFilesMixin):
        return []
    location = f"{storage.location}/{storage.manifest_name}"
    if not storage.manifest_storage.exists(storage.manifest_name):
        return [
            _error(
                f"the static files manifest {location} does not exist: every page with a "
                "static file would answer 500"
            )
        ]
    ignore_patterns = apps.get_app_config("staticfiles").ignore_patterns
    missing = sorted(
        {
            storage.clean_name(path)
            for finder in get_finders()
            for path, _ in finder.list(ignore_patterns)
            if storage.hash_key(storage.clean_name(path)) not in storage.hashed_files
        }
    )
    if not missing:
        return []
    named = ", ".join(missing[:_LISTED]) + (", ..." if len(missing) > _LISTED else "")
    return [
        _error(
            f"the static files manifest {location} lacks {len(missing)} file(s) of this "
            f"release ({named}), collected from another one: the pages naming them would "
            "answer 500"
        )
    ]


def _error(problem: str) -> checks.Error:
    return checks.Error(
        problem,
        hint=f"run `{COLLECTSTATIC}` on this machine (part of every release) before the web "
        "processes start",
        id=STATIC_MANIFEST_ERROR,
    )


@checks.register(checks.Tags.staticfiles, deploy=True)
def check_static_manifest(app_configs=None, **kwargs) -> list[checks.Error]:
    return static_manifest_errors()


def refuse_to_start_without_collected_static() -> None:
    """Raise ImproperlyConfigured when static_manifest_errors (or stripe_key_prefix_errors)
    finds any: called by wsgi.py and asgi.py, since no server runs Django's system checks
    itself."""
    errors = static_manifest_errors() + stripe_key_prefix_errors()
    if errors:
        raise ImproperlyConfigured(
            "; ".join(f"{error.id}: {error.msg} (hint: {error.hint})" for error in errors)
        )


# --- STRIPE_KEY_PREFIX ------------------------------------------------------------------------

STRIPE_KEY_PREFIX_ERROR = "billing_project.E002"


def stripe_key_prefix_errors() -> list[checks.Error]:
    """STRIPE_KEY_PREFIX starts every idempotency key and meter-event identifier we derive: it
    must leave room for our ids within Stripe's limits (an identifier is at most 100
    characters), and be printable ASCII without spaces. Checked whatever the backend (usage
    reporting uses it too), by every management command and at server start."""
    from django.conf import settings

    from invoicing.stripe.client import KEY_PREFIX_MAX

    prefix = settings.STRIPE_KEY_PREFIX
    problem = ""
    if not isinstance(prefix, str) or not prefix:
        problem = "STRIPE_KEY_PREFIX is empty"
    elif len(prefix) > KEY_PREFIX_MAX:
        problem = (
            f"STRIPE_KEY_PREFIX is {len(prefix)} characters; at most {KEY_PREFIX_MAX} leave "
            "room for our ids in Stripe's 100-character meter-event identifiers"
        )
    elif not (prefix.isascii() and prefix.isprintable()) or " " in prefix:
        problem = "STRIPE_KEY_PREFIX must be printable ASCII without spaces"
    if not problem:
        return []
    return [
        checks.Error(
            problem,
            hint="set STRIPE_KEY_PREFIX to a short name of this installation, e.g. billing-eu",
            id=STRIPE_KEY_PREFIX_ERROR,
        )
    ]


@checks.register()
def check_stripe_key_prefix(app_configs=None, **kwargs) -> list[checks.Error]:
    return stripe_key_prefix_errors()
