"""Who may call the API: a bearer token (``Authorization: Bearer fab_…``) or a logged-in staff session (with CSRF).

- No credentials, an unknown or revoked token, a token whose owner is no longer active staff: 401.
- A read-only token asking to write: 403, whatever its owner may do.
- Otherwise the request acts as the token's owner (or the session's member), with that member's portal rights:
  each endpoint asks for the Django permission the portal asks for (``members.backends.RoleBackend`` derives them
  from the role), and authorizations also for ``machines.safety.may_train`` on the machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db.models import Model
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from members.models import Member

from . import tokens
from .models import ApiToken

if TYPE_CHECKING:
    from rest_framework.views import APIView


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Member, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Invalid bearer header.")
        try:
            secret = header[1].decode("ascii")
        except UnicodeDecodeError as error:
            raise exceptions.AuthenticationFailed("Invalid bearer header.") from error
        token = tokens.find(secret)
        if token is None:
            raise exceptions.AuthenticationFailed("Unknown or revoked token.")
        return token.owner, token

    def authenticate_header(self, request: Request) -> str:
        """Makes a refusal for want of credentials a 401 (with this challenge), not a 403."""
        return f'{self.keyword} realm="api"'


class StaffSessionAuthentication(authentication.SessionAuthentication):
    """The portal's session (CSRF enforced on writes), for staff trying the API from their browser."""


def token_of(request: Request) -> ApiToken | None:
    return request.auth if isinstance(request.auth, ApiToken) else None


def acting(request: Request) -> Member:
    """The member a request acts as (only called once :class:`PortalRights` let it in)."""
    user = request.user
    assert isinstance(user, Member)
    return user


class PortalRights(permissions.BasePermission):
    """Active staff with the view's ``required_perms[method]`` (Django permission names, as the portal checks)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_active and user.is_staff):
            return False
        if not hasattr(view, (request.method or "").lower()):
            return True  # no such operation here: the view answers 405, whoever asks
        token = token_of(request)
        if request.method not in permissions.SAFE_METHODS and token is not None and not token.may_write:
            raise exceptions.PermissionDenied("This token is read-only.")
        required: dict[str, str] = getattr(view, "required_perms", {})
        method = "GET" if request.method in ("HEAD", "OPTIONS") else request.method or ""  # reads, as GET
        perm = required.get(method, "")
        return bool(perm) and user.has_perm(perm)

    def has_object_permission(self, request: Request, view: APIView, obj: Model) -> bool:
        check: Any = getattr(view, "object_rule", None)
        return check is None or request.method in permissions.SAFE_METHODS or bool(check(acting(request), obj))


class StaffOnly(permissions.BasePermission):
    """The schema and its docs page: any active staff member (a token of any scope, or the portal's session)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_active and user.is_staff)
