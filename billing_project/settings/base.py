"""Base settings: every value comes from the environment, with safe local defaults."""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from billing_project.settings.env import env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(env_str("BILLING_VAR_DIR", str(BASE_DIR / "var")))

BILLING_ENV = env_str("BILLING_ENV", "development")
if BILLING_ENV not in {"development", "production", "test"}:
    raise ImproperlyConfigured(
        f"BILLING_ENV must be development, production or test, got {BILLING_ENV!r}"
    )
PRODUCTION = BILLING_ENV == "production"

_DEV_SECRET_KEY = "dev-insecure-secret-key-do-not-use-in-production"  # noqa: S105
SECRET_KEY = env_str("SECRET_KEY", "" if PRODUCTION else _DEV_SECRET_KEY)
if PRODUCTION and (len(SECRET_KEY) < 32 or SECRET_KEY == _DEV_SECRET_KEY):
    raise ImproperlyConfigured(
        "SECRET_KEY must be set to a random value of at least 32 characters in production"
    )

DEBUG = env_bool("DEBUG", not PRODUCTION and BILLING_ENV != "test")
ALLOWED_HOSTS = env_list(
    "ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "testserver"]
)
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "anymail",
    "metering",
    "invoicing",
    "notifications",
    "portal",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "billing_project.urls"
WSGI_APPLICATION = "billing_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------
# DATABASE_URL selects the engine (postgres://... in production and tests); the embedded
# default is a SQLite file in WAL mode with IMMEDIATE transactions, so the web process, the
# worker and beat can share it without "database is locked" upgrades mid-transaction.
_SQLITE_DEFAULT = f"sqlite:///{VAR_DIR / 'billing.sqlite3'}"
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", _SQLITE_DEFAULT),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

if PRODUCTION:
    # whitenoise serves the collected static files (no CDN, no separate static server).
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

# The customer portal signs in here; the admin has its own login page.
LOGIN_URL = "/portal/login/"
LOGIN_REDIRECT_URL = "/portal/"
LOGOUT_REDIRECT_URL = "/portal/login/"

# --- API --------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["metering.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["metering.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "metering.api_errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Agent metered billing API",
    "DESCRIPTION": "Usage ingestion and billing read API for agent operators.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Swagger UI is served from our own static files: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Request bodies above this size are refused with 413 (DESIGN section 3).
BILLING_MAX_BODY_BYTES = 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = BILLING_MAX_BODY_BYTES

# --- Billing rules (durations in whole seconds) -------------------------------------------------
BILLING_MAX_EVENT_AGE = env_int("BILLING_MAX_EVENT_AGE", 35 * 24 * 3600, minimum=0)
BILLING_MAX_EVENT_FUTURE = env_int("BILLING_MAX_EVENT_FUTURE", 5 * 60, minimum=0)
BILLING_GRACE_PERIOD = env_int("BILLING_GRACE_PERIOD", 3600, minimum=0)
BILLING_REVIEW_PERIOD = env_int("BILLING_REVIEW_PERIOD", 24 * 3600, minimum=0)
BILLING_BACKEND = env_str("BILLING_BACKEND", "local")

# --- Stripe (BILLING_BACKEND=stripe, and/or usage reporting through Billing Meters) ---------
STRIPE_API_KEY = env_str("STRIPE_API_KEY", "")
STRIPE_API_BASE = env_str("STRIPE_API_BASE", "https://api.stripe.com")
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET", "")
STRIPE_WEBHOOK_TOLERANCE = env_int("STRIPE_WEBHOOK_TOLERANCE", 300, minimum=1)  # seconds
STRIPE_TIMEOUT = env_int("STRIPE_TIMEOUT", 30, minimum=1)  # seconds per request
# Prefix of every idempotency key and meter-event identifier: two installations sharing one
# Stripe account (staging and production, say) must use different prefixes.
STRIPE_KEY_PREFIX = env_str("STRIPE_KEY_PREFIX", "billing")
STRIPE_COLLECTION_METHOD = env_str("STRIPE_COLLECTION_METHOD", "charge_automatically")
STRIPE_DAYS_UNTIL_DUE = env_int("STRIPE_DAYS_UNTIL_DUE", 30, minimum=1)  # send_invoice only
STRIPE_USAGE_REPORTING = env_str("STRIPE_USAGE_REPORTING", "off")
# Realtime reporting leaves events younger than this alone (seconds), so an ingestion
# transaction still in flight is never skipped by the watermark.
STRIPE_REALTIME_SETTLE = env_int("STRIPE_REALTIME_SETTLE", 60, minimum=0)
if STRIPE_COLLECTION_METHOD not in {"charge_automatically", "send_invoice"}:
    raise ImproperlyConfigured(
        "STRIPE_COLLECTION_METHOD must be charge_automatically or send_invoice, "
        f"got {STRIPE_COLLECTION_METHOD!r}"
    )
if STRIPE_USAGE_REPORTING not in {"off", "close", "realtime"}:
    raise ImproperlyConfigured(
        f"STRIPE_USAGE_REPORTING must be off, close or realtime, got {STRIPE_USAGE_REPORTING!r}"
    )
if PRODUCTION and (BILLING_BACKEND == "stripe" or STRIPE_USAGE_REPORTING != "off"):
    if not STRIPE_API_KEY:
        raise ImproperlyConfigured("STRIPE_API_KEY must be set to use Stripe in production")
    if BILLING_BACKEND == "stripe" and not STRIPE_WEBHOOK_SECRET:
        raise ImproperlyConfigured(
            "STRIPE_WEBHOOK_SECRET must be set with BILLING_BACKEND=stripe in production"
        )

# --- Celery -------------------------------------------------------------------------------------
# The embedded default is a file-system broker under var/, so no server is needed.
_BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for _folder in ("queue", "processed", "control"):
        (_BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_BROKER_DIR / "queue"),
        "data_folder_out": str(_BROKER_DIR / "queue"),
        "processed_folder": str(_BROKER_DIR / "processed"),
        "control_folder": str(_BROKER_DIR / "control"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=1)
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"

# --- Notifications ----------------------------------------------------------------------------
# Where portal links in e-mails point; finance staff who hear of pauses and bounces.
PORTAL_BASE_URL = env_str("PORTAL_BASE_URL", "http://127.0.0.1:8000")
BILLING_OPS_EMAILS = env_list("BILLING_OPS_EMAILS", ["finance@localhost"])
# Optional signed webhook to the operator's agent platform (threshold crossed, paused, resumed).
OPERATOR_WEBHOOK_URL = env_str("OPERATOR_WEBHOOK_URL", "")
OPERATOR_WEBHOOK_SECRET = env_str("OPERATOR_WEBHOOK_SECRET", "")
if OPERATOR_WEBHOOK_URL and not OPERATOR_WEBHOOK_SECRET:
    raise ImproperlyConfigured("OPERATOR_WEBHOOK_URL needs OPERATOR_WEBHOOK_SECRET to sign with")

# --- Email --------------------------------------------------------------------------------------
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "billing@localhost")
ANYMAIL: dict[str, str] = {}

# --- Logging ------------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Production hardening -----------------------------------------------------------------------
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"
