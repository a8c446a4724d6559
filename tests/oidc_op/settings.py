"""A tiny, separate Django project: a real OpenID provider (django-oidc-provider) for the single sign-on tests.

Started by tests/oidc_op/serve.py in its own process, on a free port, with its own SQLite file; nothing here is part
of Fab-O-Matic. Its users are the people of tests/oidc_op/serve.py (USERS), each with the password PASSWORD.
"""

from __future__ import annotations

import os
from typing import Any

SECRET_KEY = "oidc-op-tests-only-insecure-key"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "oidc_provider",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "tests.oidc_op.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [os.path.join(os.path.dirname(__file__), "templates")],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ.get("OIDC_OP_DATABASE", ":memory:")}
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
LOGIN_URL = "/accounts/login/"
# Cookies are per host, not per port: on 127.0.0.1 beside the portal, the provider's must not overwrite the portal's.
SESSION_COOKIE_NAME = "op_session"
CSRF_COOKIE_NAME = "op_csrftoken"
SITE_URL = os.environ.get("OIDC_OP_URL", "http://127.0.0.1:8000")  # the issuer is SITE_URL/openid
OIDC_USERINFO = "tests.oidc_op.settings.userinfo"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # test users only: fast


def userinfo(claims: dict[str, Any], user: Any) -> dict[str, Any]:
    """The standard claims of the ``profile`` and ``email`` scopes. A user whose username starts with "unverified"
    has an address the provider never verified (``email_verified`` false)."""
    claims["given_name"] = user.first_name
    claims["family_name"] = user.last_name
    claims["name"] = f"{user.first_name} {user.last_name}".strip()
    claims["email"] = user.email
    claims["email_verified"] = not user.username.startswith("unverified")
    return claims
