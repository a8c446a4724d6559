"""``manage.py check --deploy`` warnings for the settings that made the portal unsafe when left at their defaults."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register


@register(Tags.security, deploy=True)
def check_public_address(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    warnings: list[CheckMessage] = []
    if "*" in settings.ALLOWED_HOSTS:
        warnings.append(
            Warning(
                "ALLOWED_HOSTS contains '*': the portal answers to any Host header.",
                hint="List this machine's names and addresses (scripts/env.sh writes them).",
                id="fabomatic.W001",
            )
        )
    if not settings.PUBLIC_URL_SET:
        warnings.append(
            Warning(
                f"PUBLIC_URL is not set: password-reset links point to {settings.PUBLIC_URL}.",
                hint="Set PUBLIC_URL to the address staff open the portal at, e.g. https://fabpi.local:23336.",
                id="fabomatic.W002",
            )
        )
    return warnings


@register(Tags.security, deploy=True)
def check_mail(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    backend = settings.EMAIL_BACKEND
    if backend == "django.core.mail.backends.console.EmailBackend" and not settings.DEBUG:
        return [
            Warning(
                "E-mail goes to the console: password-reset links (valid tokens) are written into the log.",
                hint="Set EMAIL_URL to your SMTP server, e.g. smtp+tls://user:password@smtp.example.org:587.",
                id="fabomatic.W003",
            )
        ]
    if backend == "fabomatic.mail.UnsentMailBackend":
        return [
            Warning(
                "EMAIL_URL is not set: password-reset and weekly summary e-mails are not sent.",
                hint="Set EMAIL_URL to your SMTP server, e.g. smtp+tls://user:password@smtp.example.org:587.",
                id="fabomatic.W003",
            )
        ]
    return []


OIDC_URLS = (
    "OIDC_OP_DISCOVERY_URL",
    "OIDC_OP_AUTHORIZATION_ENDPOINT",
    "OIDC_OP_TOKEN_ENDPOINT",
    "OIDC_OP_USER_ENDPOINT",
    "OIDC_OP_JWKS_ENDPOINT",
)


@register(Tags.security, deploy=True)
def check_identity_provider(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Single sign-on over plain HTTP: the client secret, codes and tokens would cross the network readable."""
    if not getattr(settings, "OIDC_ENABLED", False):
        return []
    plain = [name for name in OIDC_URLS if str(getattr(settings, name, "")).startswith("http://")]
    if not plain:
        return []
    return [
        Warning(
            f"Single sign-on talks to the identity provider over plain HTTP ({', '.join(plain)}).",
            hint="Use the provider's https:// addresses (OIDC_CA_BUNDLE for a certificate of the lab's own CA).",
            id="fabomatic.W020",
        )
    ]
