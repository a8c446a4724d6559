"""Fab-O-Matic settings, read from the environment (and an optional ``.env``).

Every setting that an operator may change is documented in README.md and .env.example.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import environ
from django.utils.translation import gettext_lazy as _

from fabomatic import memory

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("FABOMATIC_DATA_DIR", BASE_DIR / "var"))
# The database (e-mails, card UIDs, password hashes), logs and backups are nobody else's: whatever umask the process
# was started with, what it creates is 0640 (files) and 0750 (directories) or tighter (the units set UMask=0027).
os.umask(os.umask(0o027) | 0o027)
DATA_DIR.mkdir(mode=0o750, parents=True, exist_ok=True)
# Before any thread starts: at most two malloc arenas per process (fabomatic/memory.py says why).
memory.limit_arenas()

env = environ.FileAwareEnv(
    DEBUG=(bool, False),
    # Never "*": with any Host accepted, a forged Host header reached password-reset links and websocket origins.
    # scripts/env.sh writes this machine's names and addresses into .env.
    ALLOWED_HOSTS=(list, ["localhost", "127.0.0.1", "[::1]"]),
    PUBLIC_URL=(str, ""),
    TIME_ZONE=(str, "Europe/Rome"),
    LANGUAGE_CODE=(str, "en"),
    MQTT_BROKER_URL=(str, "mqtt://127.0.0.1:1883"),
    MQTT_TOPIC=(str, "machine"),
    MQTT_CLIENT_ID=(str, ""),
    MQTT_SHARED_SUBSCRIPTION=(bool, False),
    MQTT_TLS_CA=(str, ""),
    REDIS_URL=(str, ""),
    EMAIL_URL=(str, ""),
    DEFAULT_FROM_EMAIL=(str, "fabomatic@localhost"),
    DEFAULT_ADMIN_EMAIL=(str, "admin@fablab.local"),
    ONLINE_SECONDS=(int, 90),
    ORPHAN_SECONDS=(int, 3600),
    RETENTION_DAYS=(int, 365),
    UNKNOWN_CARD_RETENTION_DAYS=(int, 30),
    TRAINING_REMINDER_DAYS=(int, 14),
    REFUSAL_RETENTION_DAYS=(int, 90),
    FAULT_REPORTS_PER_HOUR=(int, 5),
    LOG_LEVEL=(str, "INFO"),
    SECURE_SSL=(bool, True),
    CSRF_TRUSTED_ORIGINS=(list, []),
)
ENV_FILE = Path(os.environ.get("FABOMATIC_ENV_FILE", BASE_DIR / ".env"))
if ENV_FILE.is_file():
    env.read_env(str(ENV_FILE))

# No production default: `make run` generates one into .env on first run.
SECRET_KEY = env("SECRET_KEY")
DEBUG = env("DEBUG")
ALLOWED_HOSTS = env("ALLOWED_HOSTS")
CSRF_TRUSTED_ORIGINS = env("CSRF_TRUSTED_ORIGINS")
# The lab's own address, e.g. https://fabpi.local:23336: password-reset links are built from it, never from the
# request's Host header, and websocket pages from it are trusted. Unset (manage.py check --deploy warns), the first
# allowed host on WEB_PORT.
PUBLIC_URL_SET = bool(env("PUBLIC_URL"))
_first_host = next((h for h in ALLOWED_HOSTS if h != "*" and not h.startswith(".")), "localhost")
PUBLIC_URL = (env("PUBLIC_URL") or f"https://{_first_host}:{env.int('WEB_PORT', default=23336)}").rstrip("/")
_public = urlsplit(PUBLIC_URL)
if _public.scheme not in ("http", "https") or not _public.hostname or _public.path:
    raise environ.ImproperlyConfigured("PUBLIC_URL must be like https://fabpi.local:23336 (scheme, host and port)")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "import_export",
    "axes",
    "auditlog",
    "members",
    "machines",
    "telemetry",
    "importer",
    "operations",
    "integrations",
    "fabomatic",
    # The REST API (api/, README "REST API"): the portal's process only, the bridge's list below has none of it.
    # Not "rest_framework": the template engine imports every installed app's template tags at start, and DRF's pull
    # in 20 MB (requests, pygments…) for a browsable API this project does not serve (JSON only); the API's URLs load
    # DRF when an API request comes (api/routing.py).
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "api",
]

MIDDLEWARE = [
    # First, so it times every request: counts and latencies per view for /metrics (fabomatic/metrics.py).
    "fabomatic.metrics.request_metrics",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    # Requests under /api/ resolve with the API's URLs, which only they load (api/routing.py).
    "api.routing.api_urlconf",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # The audit trail's actor and client address for every change a request makes (operations/audit.py).
    "auditlog.middleware.AuditlogMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # django-axes wants to be last.
    "axes.middleware.AxesMiddleware",
]

# FABOMATIC_PROCESS=bridge, set in the environment of the board bridge by what starts it (Procfile,
# deploy/systemd/fabomatic-bridge.service, the tests' and benchmarks' spawners), loads only the apps the bridge uses:
# without the portal's (daphne/twisted, admin, import_export, axes...) it stays under 80 MB RSS, small enough for a
# Raspberry Pi. Unset, every app is loaded: `manage.py mqtt_listen` run by hand works the same, only bigger. It is set
# per process, so never in .env (every process reads that file).
FABOMATIC_PROCESS = os.environ.get("FABOMATIC_PROCESS", "")
if FABOMATIC_PROCESS == "bridge":
    INSTALLED_APPS = [
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "channels",
        "members",
        "machines",
        "telemetry",
        "integrations",
    ]
    MIDDLEWARE = []
    # redis-py and channels_redis import the optional `cryptography` when it is installed (the portal's TLS needs
    # it), for OCSP checks and message encryption that the bridge never uses: 6 MB of its memory on a Raspberry Pi.
    # Both fall back when the import fails, as on an install without it.
    sys.modules.setdefault("cryptography", None)  # type: ignore[arg-type]

ROOT_URLCONF = "fabomatic.urls"
WSGI_APPLICATION = "fabomatic.wsgi.application"
ASGI_APPLICATION = "fabomatic.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "fabomatic" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.i18n",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'fabomatic.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The bridge and the portal write concurrently: WAL lets readers run beside the writer,
    # the busy timeout makes a writer wait instead of failing with "database is locked", and
    # IMMEDIATE transactions take the write lock up front so no deadlock-upgrade can happen.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": (
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; "
                f"PRAGMA busy_timeout=20000; PRAGMA cache_size=-{env.int('SQLITE_CACHE_KB', default=4000)};"
            ),
        }
    )
    # Tests that run the bridge or daphne as a subprocess need the test database in a file.
    DATABASES["default"].setdefault("TEST", {"NAME": str(DATA_DIR / "test-fabomatic.sqlite3")})
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", 60)
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Authentication -------------------------------------------------------------------------
AUTH_USER_MODEL = "members.Member"
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    # Django's password login (ModelBackend), refused to all but superusers while OIDC_PASSWORD_LOGIN is off.
    "members.sso.PasswordBackend",
    # Sessions opened by single sign-on (members/sso.py; the callback logs in, never a password).
    "members.sso.SSOBackend",
    # Portal permissions from the member's role (backend admin / maintenance / view only).
    "members.backends.RoleBackend",
]
if FABOMATIC_PROCESS == "bridge":
    # No axes and no single sign-on in the bridge.
    AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend", "members.backends.RoleBackend"]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"
LOGIN_REDIRECT_URL = "admin:index"
PASSWORD_RESET_TIMEOUT = 1800  # 30 minutes, as the old backend promised.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=0.25)  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_USERNAME_FORM_FIELD = "username"

# --- Single sign-on (OpenID Connect, members/sso.py; README "Single sign-on (OpenID Connect)") -----------------------
# Off by default. The provider is found by its discovery document (OIDC_OP_DISCOVERY_URL) or by its endpoints one by
# one (these win over discovery). Members are matched by verified e-mail; none is created unless OIDC_CREATE_USERS
# (then without portal access). OIDC_PASSWORD_LOGIN=false: only superusers may still log in with a password.
OIDC_ENABLED = env.bool("OIDC_ENABLED", default=False)
OIDC_PROVIDER_NAME = env.str("OIDC_PROVIDER_NAME", default="")
OIDC_RP_CLIENT_ID = env.str("OIDC_RP_CLIENT_ID", default="")
OIDC_RP_CLIENT_SECRET = env.str("OIDC_RP_CLIENT_SECRET", default="")
OIDC_OP_DISCOVERY_URL = env.str("OIDC_OP_DISCOVERY_URL", default="")
OIDC_OP_AUTHORIZATION_ENDPOINT = env.str("OIDC_OP_AUTHORIZATION_ENDPOINT", default="")
OIDC_OP_TOKEN_ENDPOINT = env.str("OIDC_OP_TOKEN_ENDPOINT", default="")
OIDC_OP_USER_ENDPOINT = env.str("OIDC_OP_USER_ENDPOINT", default="")
OIDC_OP_JWKS_ENDPOINT = env.str("OIDC_OP_JWKS_ENDPOINT", default="")
OIDC_OP_LOGOUT_ENDPOINT = env.str("OIDC_OP_LOGOUT_ENDPOINT", default="")
OIDC_OP_ISSUER = env.str("OIDC_OP_ISSUER", default="")
OIDC_RP_SIGN_ALGO = env.str("OIDC_RP_SIGN_ALGO", default="RS256")
OIDC_CREATE_USERS = env.bool("OIDC_CREATE_USERS", default=False)
OIDC_PASSWORD_LOGIN = env.bool("OIDC_PASSWORD_LOGIN", default=True)
# A provider with a certificate of the lab's own CA: that CA's file (verification is never turned off).
OIDC_VERIFY_SSL: bool | str = env.str("OIDC_CA_BUNDLE", default="") or True
OIDC_TIMEOUT = env.float("OIDC_TIMEOUT", default=10)
OIDC_RP_SCOPES = "openid email profile"
OIDC_USE_PKCE = True
OIDC_USE_NONCE = True
OIDC_STORE_ID_TOKEN = True  # the logout's id_token_hint
OIDC_AUTHENTICATION_CALLBACK_URL = "oidc_callback"
# Where the provider sends a member back after its own logout (register it at the provider as post-logout URI).
OIDC_LOGOUT_REDIRECT_URL = f"{PUBLIC_URL}/admin/login/"
if OIDC_ENABLED:
    if not OIDC_RP_CLIENT_ID or not OIDC_RP_CLIENT_SECRET:
        raise environ.ImproperlyConfigured("OIDC_ENABLED needs OIDC_RP_CLIENT_ID and OIDC_RP_CLIENT_SECRET")
    _endpoints = (OIDC_OP_AUTHORIZATION_ENDPOINT, OIDC_OP_TOKEN_ENDPOINT, OIDC_OP_USER_ENDPOINT, OIDC_OP_JWKS_ENDPOINT)
    if not OIDC_OP_DISCOVERY_URL and not all(_endpoints):
        raise environ.ImproperlyConfigured(
            "OIDC_ENABLED needs OIDC_OP_DISCOVERY_URL, or OIDC_OP_AUTHORIZATION_ENDPOINT, OIDC_OP_TOKEN_ENDPOINT, "
            "OIDC_OP_USER_ENDPOINT and OIDC_OP_JWKS_ENDPOINT"
        )

# --- Internationalisation -------------------------------------------------------------------
LANGUAGE_CODE = env("LANGUAGE_CODE")
LANGUAGES = [("en", _("English")), ("it", _("Italian"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
# One date format per language, the short one (fabomatic/formats/<lang>/formats.py).
FORMAT_MODULE_PATH = ["fabomatic.formats"]
TIME_ZONE = env("TIME_ZONE")
USE_I18N = True
USE_TZ = True

# --- Static files ---------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns on every start when it is missing
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# --- Channels -------------------------------------------------------------------------------
REDIS_URL = env("REDIS_URL")
if REDIS_URL:
    # The pub/sub layer keeps one connection per process whatever the number of sockets;
    # the classic RedisChannelLayer pools one per group operation and ran out at ~200 dashboards.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": env.str("CHANNELS_PREFIX", default="fabomatic")},
        }
    }
else:
    # Single-process fallback (tests, or a portal without a bridge).
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- MQTT -----------------------------------------------------------------------------------
_broker = urlsplit(env("MQTT_BROKER_URL"))
if _broker.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
    raise environ.ImproperlyConfigured("MQTT_BROKER_URL must start with mqtt:// or mqtts://")
MQTT = {
    "HOST": _broker.hostname or "127.0.0.1",
    "PORT": _broker.port or (8883 if _broker.scheme in ("mqtts", "ssl") else 1883),
    "USERNAME": _broker.username or None,
    "PASSWORD": _broker.password or None,
    "TLS": _broker.scheme in ("mqtts", "ssl"),
    "TLS_CA": env("MQTT_TLS_CA") or None,
    "TOPIC": env("MQTT_TOPIC").strip("/"),
    # The bridge's client id (stats/<client id>). By default unguessable, and one per process (several bridges may
    # share a broker): fabomatic-<host>-<pid>-<64 random bits>.
    "CLIENT_ID": env("MQTT_CLIENT_ID") or f"fabomatic-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(8)}",
    "SHARED_SUBSCRIPTION": env("MQTT_SHARED_SUBSCRIPTION"),
}
# A machine is online when its board was heard from in the last ONLINE_SECONDS.
ONLINE_SECONDS = env("ONLINE_SECONDS")
# The lab's kiosk screens (machines/kiosk.py): the name in their header, and whether they show the first name of
# whoever is on a machine (off: "In use" only).
LAB_NAME = env.str("LAB_NAME", default="Fab-O-Matic")
KIOSK_SHOW_NAMES = env.bool("KIOSK_SHOW_NAMES", default=True)
# An open use silent for longer than this is closed at its last heartbeat by the bridge.
ORPHAN_SECONDS = env("ORPHAN_SECONDS")
# The bridge's worker threads (requests of one machine in order, machines in parallel), and how long after a request
# arrives it answers request_ok false if no decision was made (the board waits 2 s from its own publish).
# SQLite has one writer and the threads share the GIL: 1 worker measured 2,450-2,650 replies/s against 1,900-2,440
# with 2 and 2,060 with 4; spare workers join only while one job holds a worker (PostgreSQL: 4 workers 1,455/s
# against 905 with 1).
BRIDGE_WORKERS = env.int("BRIDGE_WORKERS", default=1 if DATABASES["default"]["ENGINE"].endswith("sqlite3") else 4)
BRIDGE_REPLY_DEADLINE = env.float("BRIDGE_REPLY_DEADLINE", default=1.5)
# Firmware updates from the portal (telemetry/rollout.py): the boards' ArduinoOTA UDP port, the local address the
# boards connect back to (all by default) and its TCP port, and how long a flashed board has to come back with the
# new version.
OTA_PORT = env.int("OTA_PORT", default=3232)
OTA_BIND = env.str("OTA_BIND", default="0.0.0.0")
OTA_HOST_PORT = env.int("OTA_HOST_PORT", default=0)  # 0: a free port per push; fixed, for a firewall rule
OTA_CONFIRM_SECONDS = env.int("OTA_CONFIRM_SECONDS", default=180)

# --- Metrics (Prometheus, README "Metrics, Grafana and alerts") ---------------------------------------------------
# The bridge serves its metrics on METRICS_ADDRESS:METRICS_PORT (0: not at all), the portal on /metrics. Both only to
# a client on this machine that is not proxied, or to one sending "Authorization: Bearer <METRICS_TOKEN>" (unset:
# no token is accepted; METRICS_TOKEN_FILE reads it from a file).
METRICS_PORT = env.int("METRICS_PORT", default=0)
METRICS_ADDRESS = env.str("METRICS_ADDRESS", default="127.0.0.1")
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
if METRICS_TOKEN and len(METRICS_TOKEN) < 24:
    raise environ.ImproperlyConfigured("METRICS_TOKEN must be at least 24 characters (openssl rand -hex 24)")

# --- Integrations (README "Integrations") ------------------------------------------------------------------------
# Webhooks (integrations/delivery.py, manage.py deliver_webhooks): receivers must be https unless WEBHOOK_ALLOW_HTTP
# (a receiver on the lab's LAN); seconds before a silent receiver is given up on for this attempt; how long a
# delivery is retried; how long the delivery log is kept (manage.py purge).
WEBHOOK_ALLOW_HTTP = env.bool("WEBHOOK_ALLOW_HTTP", default=False)
WEBHOOK_TIMEOUT = env.float("WEBHOOK_TIMEOUT", default=5.0)
WEBHOOK_RETRY_HOURS = env.float("WEBHOOK_RETRY_HOURS", default=24.0)
WEBHOOK_LOG_DAYS = env.int("WEBHOOK_LOG_DAYS", default=30)
# Home Assistant MQTT discovery, published by the bridge (integrations/homeassistant.py).
HA_DISCOVERY = env.bool("HA_DISCOVERY", default=False)
HA_DISCOVERY_PREFIX = env.str("HA_DISCOVERY_PREFIX", default="homeassistant").strip("/") or "homeassistant"
# SpaceAPI (integrations/spaceapi.py): /spaceapi.json, off by default.
SPACEAPI_ENABLED = env.bool("SPACEAPI_ENABLED", default=False)
SPACEAPI_SPACE = env.str("SPACEAPI_SPACE", default="") or LAB_NAME
SPACEAPI_LOGO = env.str("SPACEAPI_LOGO", default="")
SPACEAPI_URL = env.str("SPACEAPI_URL", default="")
SPACEAPI_ADDRESS = env.str("SPACEAPI_ADDRESS", default="")
SPACEAPI_LAT = env.float("SPACEAPI_LAT", default=0.0)
SPACEAPI_LON = env.float("SPACEAPI_LON", default=0.0)
SPACEAPI_EMAIL = env.str("SPACEAPI_EMAIL", default="")
# "in_use": open while any machine is in use; "open" / "closed": a fixed flag set by hand.
SPACEAPI_OPEN_RULE = env.str("SPACEAPI_OPEN_RULE", default="in_use")
if SPACEAPI_OPEN_RULE not in ("in_use", "open", "closed"):
    raise environ.ImproperlyConfigured("SPACEAPI_OPEN_RULE must be in_use, open or closed")

# --- GDPR -----------------------------------------------------------------------------------
RETENTION_DAYS = env("RETENTION_DAYS")
UNKNOWN_CARD_RETENTION_DAYS = env("UNKNOWN_CARD_RETENTION_DAYS")
# Refused swipes (with their reason) are kept this long; closed fault reports and confirmed checks after use follow
# RETENTION_DAYS.
REFUSAL_RETENTION_DAYS = env("REFUSAL_RETENTION_DAYS")

# --- Fault reports (machines/faults.py) -------------------------------------------------------
# Public reports from one address (its keyed hash: the address is never stored) in an hour, beyond which the report
# page answers 429. One machine takes at most 20 an hour whatever the addresses.
FAULT_REPORTS_PER_HOUR = env("FAULT_REPORTS_PER_HOUR")

# --- Audit trail (django-auditlog, operations/audit.py) -----------------------------------------------
# Staff changes, with who, when and before/after, kept this long (manage.py purge deletes older entries).
AUDIT_RETENTION_DAYS = env.int("AUDIT_RETENTION_DAYS", default=730)
AUDITLOG_STORE_JSON_CHANGES = True
AUDITLOG_USE_FK_STRING_REPRESENTATION = False  # ids, not names: an erasure has fewer places to redact
# What staff change in the portal. Board traffic (uses opened and closed by the bridge, boards' heartbeats) is not
# a staff change: the bridge does not load auditlog, and the heartbeat fields are excluded.
AUDITLOG_INCLUDE_TRACKING_MODELS = (
    {"model": "members.member", "exclude_fields": ["password", "last_login"]},
    "members.role",
    "members.card",
    # The report code is a secret (the sticker's address): its change is recorded without its value.
    {"model": "machines.machine", "exclude_fields": ["last_seen", "heard_live_at", "report_token"]},
    "machines.machinetype",
    {"model": "machines.maintenanceplan", "exclude_fields": ["done_at", "done_at_hours"]},
    "machines.authorization",
    {"model": "machines.use", "exclude_fields": ["last_seen"]},
    "machines.intervention",
    {"model": "machines.kioskscreen", "exclude_fields": ["token_hash", "last_seen_at"]},
    {"model": "machines.faultreport", "exclude_fields": ["source"]},
    "machines.machinecheck",
    {"model": "telemetry.firmwareimage", "exclude_fields": ["data"]},
    "telemetry.rollout",
    "telemetry.otapush",
    {"model": "integrations.subscription", "exclude_fields": ["secret"]},
    # The secret's hash is never shown; its last use is no staff change.
    {"model": "api.apitoken", "exclude_fields": ["token_hash", "last_used_at"]},
)

# --- REST API (api/, README "REST API") ---------------------------------------------------------------------------
# Bearer tokens made in the portal, or a staff session (with CSRF); JSON only (the browsable API's inline scripts
# would break the CSP). Each view asks for the portal's own permission (api/auth.py).
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["api.auth.BearerTokenAuthentication", "api.auth.StaffSessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["api.auth.PortalRights"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Fab-O-Matic API",
    "DESCRIPTION": "Machines and their live state, uses, members, cards, trainings, maintenance and unknown cards.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["api.auth.StaffOnly"],
    "SCHEMA_PATH_PREFIX": "/api/v1",
    # Swagger UI from this host (drf-spectacular-sidecar), never a CDN: the CSP allows 'self' only.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "UseFlagEnum": "machines.models.Use.Flag",
        "ExpiryEnum": "machines.models.Authorization.Expiry",
    },
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "api.schema.error_responses"],
}

# --- Mail -----------------------------------------------------------------------------------
# manage.py send_training_reminders (daily): members are told this many days before a training of theirs lapses.
TRAINING_REMINDER_DAYS = env("TRAINING_REMINDER_DAYS")
if env("EMAIL_URL"):
    vars().update(env.email_url("EMAIL_URL"))
elif DEBUG:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
else:
    # Never the console in production: it wrote password-reset links (valid tokens) into the journal. Nothing is
    # sent, a warning is logged without the body, and check --deploy warns (fabomatic.W003).
    EMAIL_BACKEND = "fabomatic.mail.UnsentMailBackend"
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
DEFAULT_ADMIN_EMAIL = env("DEFAULT_ADMIN_EMAIL")
# Seconds before a silent SMTP server is given up on (Django's default waits for ever).
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=30)

# --- Import / export ------------------------------------------------------------------------
IMPORT_EXPORT_ESCAPE_FORMULAE_ON_EXPORT = True
IMPORT_EXPORT_EXPORT_PERMISSION_CODE = "view"
# Excel only: no CSV (formula-injection prone, encoding trouble) and no format list to choose from.
if FABOMATIC_PROCESS != "bridge":  # the bridge does not load import_export (and its tablib/openpyxl)
    from import_export.formats.base_formats import XLSX  # settings only read at request time

    IMPORT_EXPORT_FORMATS = [XLSX]
    EXPORT_FORMATS = [XLSX]

# --- Security -------------------------------------------------------------------------------
# The portal is served over HTTPS (daphne with TLS on 23336, or behind a reverse proxy).
if not DEBUG and env("SECURE_SSL"):
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    # Daphne only speaks TLS, so this never redirects there; behind a proxy it enforces HTTPS.
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    # Preload asks browser vendors to hard-code HTTPS for the whole domain: a public site's choice, never a LAN
    # host's (a self-signed fabpi.local). Opt in with SECURE_HSTS_PRELOAD=1; without it, check --deploy's advice to
    # preload (security.W021) is silenced as a decision taken.
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
    SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
# Content-Security-Policy (django-csp): scripts, styles, fonts and connections from the portal itself only; no inline
# script anywhere (the admin has none; the portal's behaviour is in fabomatic/static). 'self' covers the dashboard's
# websocket to the same host and port. The hashes allow, by their exact text, the only inline attributes left, all
# in django-import-export's export page: its "select all" handler "onSelectToggleChange(event)" and two style
# attributes, "padding: 0;" and "font-weight: bold;" (tests/test_portal_hardening.py visits that page).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'", "'unsafe-hashes'", "'sha256-wid4zL8fR53ZYy1ljOepzR77Dn6vWUUxuNnnWWBP3I8='"],
        "style-src": [
            "'self'",
            "'unsafe-hashes'",
            "'sha256-mHgUAqxc8GPXM/QhzkHrHujcrQTU9fd6ZjWz+icxKcA='",
            "'sha256-+YWRMZ88jMyO7jVlBA52tZADiPobPIUA8LAWee68Fvs='",
        ],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
if OIDC_ENABLED:
    # The logout form's POST is redirected to the provider's end_session_endpoint: form-action covers redirects.
    _provider = {OIDC_OP_DISCOVERY_URL, OIDC_OP_LOGOUT_ENDPOINT} - {""}
    CONTENT_SECURITY_POLICY["DIRECTIVES"]["form-action"] += sorted(
        f"{urlsplit(url).scheme}://{urlsplit(url).netloc}" for url in _provider
    )

# --- Logging --------------------------------------------------------------------------------
# Besides the console (journald), each long-running process keeps a small rotating file in LOG_DIR, one per
# process (web, mqtt_listen, purge, ...), so no two processes ever rotate the same file; the System page shows
# their last lines. LOG_DIR= (empty) turns the files off; tests never write them.
LOG_DIR = env.str("LOG_DIR", default=str(DATA_DIR / "log"))
# Each file is named after what the process runs (<command>.log for manage.py <command>, else web.log: daphne), as
# syslog tags lines with the program's name. The only use of the command line here: it names a file, switches nothing.
_argv = [os.path.basename(a) for a in sys.argv[:2]]
_process = _argv[1] if _argv and _argv[0] == "manage.py" and len(_argv) > 1 else "web"
_log_handlers = ["console"]
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    # A refused request (403 and other 4xx) is one line, not a 2.5 KB traceback (fabomatic/logfilters.py).
    "filters": {"one_line_client_errors": {"()": "fabomatic.logfilters.OneLineClientErrors"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["one_line_client_errors"]}
    },
    "root": {"handlers": _log_handlers, "level": "WARNING"},
    "loggers": {
        app: {"handlers": _log_handlers, "level": env("LOG_LEVEL"), "propagate": False}
        for app in ("fabomatic", "members", "machines", "telemetry", "importer", "operations")
    },
}
if LOG_DIR and "pytest" not in sys.modules and _process not in ("test", "shell", "check"):
    Path(LOG_DIR).mkdir(parents=True, exist_ok=True)
    LOGGING["handlers"]["file"] = {
        "class": "logging.handlers.RotatingFileHandler",
        "formatter": "plain",
        "filename": str(Path(LOG_DIR) / f"{_process}.log"),
        "filters": ["one_line_client_errors"],
        "maxBytes": 1_000_000,
        "backupCount": 1,
        "encoding": "utf-8",
    }
    _log_handlers.append("file")
