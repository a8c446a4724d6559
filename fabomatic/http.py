"""The typed request of a logged-in member, for the type checker: ``request.user`` is a Member, not a union."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from django.http import HttpRequest

if TYPE_CHECKING:
    from members.models import Member


class AuthenticatedHttpRequest(HttpRequest):
    """A request whose user is a logged-in member: what a view behind ``admin_site.admin_view`` receives (the admin
    lets in only active staff members). A type only, never instantiated: Django still builds plain HttpRequests."""

    user: Member


def acting_member(request: HttpRequest) -> Member:
    """The member making an admin request, from an admin hook whose signature says HttpRequest (``save_model``,
    actions, permission checks): the admin calls those only behind ``admin_view``."""
    return cast(AuthenticatedHttpRequest, request).user
