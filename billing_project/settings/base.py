"""Base settings: every value comes from the environment, with safe local defaults."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

from billing_project.settings.email import env_anymail, tracking_webhook_provider
from billing_project.settings.env import env_bool, env_int, env_list, env_rate, env_str

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
    "billing_project.apps.ProjectConfig",  # the deployment checks (billing_project/checks.py)
    "billing_project.apps.BillingAdminConfig",  # django.contrib.admin with our AdminSite
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
    "axes",
    "csp",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "audit",  # below every app of ours: they all append to its log
    "metering",
    "invoicing",
    "notifications",
    "budgets",
    "billing_cycle",  # above invoicing and notifications: the cycle calls both
    "portal",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # NUL bytes, bodies of unknown length, over the limit or cut short: refused here, for
    # every URL, before any session or query (billing_project/request_guard.py).
    "billing_project.request_guard.RequestGuardMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
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
    # Django's SQLite backend with exact decimals (text columns, exact sums): see
    # billing_project/sqlite.
    DATABASES["default"]["ENGINE"] = "billing_project.sqlite"
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    _sqlite_name = str(DATABASES["default"]["NAME"])
    if _sqlite_name and ":memory:" not in _sqlite_name and not _sqlite_name.startswith("file:"):
        # Tests get a file beside it, not Django's shared in-memory database, whose table
        # locks fail concurrent transactions at once instead of making them wait.
        _sqlite_path = Path(_sqlite_name)
        DATABASES["default"]["TEST"] = {
            "NAME": str(_sqlite_path.with_name(f"test_{_sqlite_path.name}"))
        }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache ------------------------------------------------------------------------------------
# Holds the API rate-limit counters, so it must be shared by every web process: Redis in
# production (CACHE_URL, or REDIS_URL), a directory under var/ on the embedded default.
CACHE_URL = env_str("CACHE_URL", "") or env_str("REDIS_URL", "")
if CACHE_URL:
    if urlsplit(CACHE_URL).scheme not in {"redis", "rediss", "unix"}:
        raise ImproperlyConfigured(
            "CACHE_URL (or REDIS_URL) must be a redis://, rediss:// or unix:// URL"
        )
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CACHE_URL,
            "KEY_PREFIX": "billing",
            # Short socket timeouts: a cache outage must not hold requests (rate limits fail open).
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
            "OPTIONS": {"MAX_ENTRIES": 10000},
        }
    }

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

# django-axes checks every login (portal and admin) before the password is: after
# BILLING_LOGIN_FAILURE_LIMIT failures for one username from one IP address, that pair is
# refused (429) for BILLING_LOGIN_COOLOFF seconds, counted again from each refused attempt.
# A successful login clears the count. Attempts are rows in the database (the admin lists them).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_ENABLED = env_bool("BILLING_LOGIN_THROTTLE", True)
AXES_FAILURE_LIMIT = env_int("BILLING_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(seconds=env_int("BILLING_LOGIN_COOLOFF", 15 * 60, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "billing_project.login_lockout.locked_out_response"
AXES_VERBOSE = False  # no start-up banner; failures and lockouts are still logged

# --- Back office ------------------------------------------------------------------------------
# /admin/ is for active staff who are superusers or members of one of these groups.
BILLING_ADMIN_GROUPS = env_list("BILLING_ADMIN_GROUPS", ["Finance"])
# Two-factor login (django-otp TOTP): when on, users with a confirmed TOTP device must give its
# current token at the admin login. Devices are added in the admin (OTP TOTP devices).
BILLING_ADMIN_2FA = env_bool("BILLING_ADMIN_2FA", False)
OTP_TOTP_ISSUER = "Agent billing"

# --- API --------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["metering.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["metering.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "billing_project.api_errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["metering.throttling.ApiKeyRateThrottle"],
    "UNAUTHENTICATED_USER": None,
}
# Requests per API key (metering/throttling.py): "600/min", "10/s", "5000/hour" or "off".
BILLING_RATE_LIMITS = {
    "events": env_rate("BILLING_RATE_LIMIT_EVENTS", "600/min"),  # POST /api/v1/events
    "reads": env_rate("BILLING_RATE_LIMIT_READS", "1200/min"),  # the GET endpoints
    "writes": env_rate("BILLING_RATE_LIMIT_WRITES", "600/min"),  # customers, plans, budgets
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

# Request bodies above this size are refused with 413 on every URL (DESIGN section 3), by
# billing_project/request_guard.py before anything is read.
BILLING_MAX_BODY_BYTES = 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = BILLING_MAX_BODY_BYTES

# --- Billing rules (durations in whole seconds) -------------------------------------------------
BILLING_MAX_EVENT_AGE = env_int("BILLING_MAX_EVENT_AGE", 35 * 24 * 3600, minimum=0)
BILLING_MAX_EVENT_FUTURE = env_int("BILLING_MAX_EVENT_FUTURE", 5 * 60, minimum=0)
BILLING_GRACE_PERIOD = env_int("BILLING_GRACE_PERIOD", 3600, minimum=0)
BILLING_REVIEW_PERIOD = env_int("BILLING_REVIEW_PERIOD", 24 * 3600, minimum=0)
BILLING_BACKEND = env_str("BILLING_BACKEND", "local")
# Payment terms: an invoice is due this many days after it is finalized (its due date is fixed
# then); Stripe's send_invoice days until due default to it.
BILLING_PAYMENT_TERMS_DAYS = env_int("BILLING_PAYMENT_TERMS_DAYS", 30, minimum=0)
# The seller printed on every invoice and credit note: legal name, postal address (lines
# separated by newlines or by "\n"), tax id (VAT number), and a contact e-mail.
BILLING_SELLER_NAME = env_str("BILLING_SELLER_NAME", "Agent Billing Operator")
BILLING_SELLER_ADDRESS = env_str("BILLING_SELLER_ADDRESS", "")
BILLING_SELLER_TAX_ID = env_str("BILLING_SELLER_TAX_ID", "")
BILLING_SELLER_EMAIL = env_str("BILLING_SELLER_EMAIL", "")

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
STRIPE_DAYS_UNTIL_DUE = env_int(
    "STRIPE_DAYS_UNTIL_DUE", max(BILLING_PAYMENT_TERMS_DAYS, 1), minimum=1
)  # send_invoice only
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

# A message still pending this long after it was recorded is queued again (seconds).
BILLING_NOTIFICATION_RETRY_AFTER = env_int("BILLING_NOTIFICATION_RETRY_AFTER", 120, minimum=1)

# --- Email --------------------------------------------------------------------------------------
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
# The SMTP relay, when EMAIL_BACKEND is django.core.mail.backends.smtp.EmailBackend.
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "billing@localhost")
# django-anymail's options: the JSON object in ANYMAIL, then each ANYMAIL_<NAME> variable
# (ANYMAIL_POSTMARK_SERVER_TOKEN, ANYMAIL_WEBHOOK_SECRET=user:password, ...).
ANYMAIL = env_anymail()
# The provider whose delivery/bounce webhook is mounted at /anymail/<provider>/tracking/: the
# one EMAIL_BACKEND names, and only when its webhook is authenticated (basic auth with
# ANYMAIL_WEBHOOK_SECRET, or the provider's signing key). Production refuses to start with an
# anymail provider whose webhook would be unauthenticated. No other provider's URL exists.
EMAIL_TRACKING_PROVIDER = tracking_webhook_provider(EMAIL_BACKEND, ANYMAIL, production=PRODUCTION)

# --- Logging ------------------------------------------------------------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # API keys and Authorization headers are masked in every record the handler writes.
    "filters": {"redact_secrets": {"()": "billing_project.log_redaction.RedactSecretsFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact_secrets"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # Django's own loggers write through the root handler too (its default "django" and
    # "django.server" handlers would print records unmasked).
    "loggers": {
        "django": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        "django.server": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        "django.db.backends": {"level": "WARNING"},
    },
}

# --- Browser security headers and cookies (every environment) ---------------------------------
# The Content-Security-Policy (django-csp): everything from our own origin, no inline scripts
# and no <style> elements. Inline style="" attributes are allowed: the portal sizes its budget
# bar and colours its chart legend with them. Pages that need less set their own header (the
# invoice document: nothing but its inline styles).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "style-src-attr": [UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"  # Lax, not Strict: links in e-mails open the portal signed in
CSRF_COOKIE_HTTPONLY = True  # no script reads it: every form carries its token
CSRF_COOKIE_SAMESITE = "Lax"

# --- Production hardening -----------------------------------------------------------------------
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # Load balancers probe /healthz over plain HTTP, without X-Forwarded-Proto.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
