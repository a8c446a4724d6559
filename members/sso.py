"""Single sign-on with OpenID Connect: the part every portal process loads.

What the login page and the session need: whether single sign-on is on, the provider's name, whether password
login is allowed, and the session's backend (:class:`SSOBackend`). The flow itself (``members/oidc.py``, with
mozilla-django-oidc, requests and PyJWT: about 5 MB) is imported when a member uses it, so a portal without single
sign-on does not carry it (README → Raspberry Pi: the memory budget).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.auth.backends import ModelBackend
from django.http import Http404, HttpRequest, HttpResponse
from django.utils.translation import gettext

from members.models import Member

BACKEND = "members.sso.SSOBackend"


def enabled() -> bool:
    return bool(getattr(settings, "OIDC_ENABLED", False))


def provider_name() -> str:
    return str(getattr(settings, "OIDC_PROVIDER_NAME", "") or gettext("single sign-on"))


def password_login_allowed() -> bool:
    """Whether staff may log in with a password (superusers always may: the break-glass)."""
    return not enabled() or bool(getattr(settings, "OIDC_PASSWORD_LOGIN", True))


def may_use_portal(member: Member) -> bool:
    return member.is_active and member.is_staff and not member.disabled and member.deleted_at is None


class PasswordBackend(ModelBackend):
    """Django's password login, refused to everybody but superusers while ``OIDC_PASSWORD_LOGIN`` is off (also for
    sessions opened by password before: they end)."""

    def user_can_authenticate(self, user: Any) -> bool:
        return super().user_can_authenticate(user) and (password_login_allowed() or bool(user.is_superuser))


class SSOBackend(ModelBackend):
    """The backend of sessions opened by single sign-on: never authenticates a password (only the callback logs in,
    members/oidc.py), and keeps a session only while single sign-on is on and the member may still use the portal:
    disabling, erasing or taking away portal access ends it at the next request."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> Member | None:
        return None

    def get_user(self, user_id: Any) -> Member | None:
        member = Member.objects.filter(pk=user_id).first()
        return member if member is not None and enabled() and may_use_portal(member) else None


def start_view(request: HttpRequest) -> HttpResponse:
    """``/oidc/authenticate/``: to the provider's login (members/oidc.py)."""
    if not enabled():
        raise Http404
    from members.oidc import StartView

    return StartView.as_view()(request)


def callback_view(request: HttpRequest) -> HttpResponse:
    """``/oidc/callback/``: the provider's answer (members/oidc.py)."""
    if not enabled():
        raise Http404
    from members import oidc

    return oidc.callback_view(request)


def logout_view(request: HttpRequest) -> HttpResponse:
    """The portal's logout: a session opened by single sign-on also ends at the provider (members/oidc.py)."""
    if not enabled():
        return admin.site.logout(request)
    from members import oidc

    return oidc.logout_view(request)
