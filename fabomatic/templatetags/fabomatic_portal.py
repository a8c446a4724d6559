"""``{% portal_nav %}``: the portal's top navigation, built around what staff do rather than around the apps."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.http import HttpRequest
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from fabomatic.admin import format_hours, short_datetime

register = template.Library()

# (label, url name, the model whose view permission shows the link, or None for every staff member)
NAV = [
    (_("Dashboard"), "admin:index", None),
    (_("Members"), "admin:members_member_changelist", "members.view_member"),
    (_("Machines"), "admin:machines_machine_changelist", "machines.view_machine"),
    (_("Uses"), "admin:machines_use_changelist", "machines.view_use"),
    (_("Maintenance"), "admin:machines_intervention_changelist", "machines.view_intervention"),
    # Trainers and portal administrators (members/backends.py gives trainers this permission).
    (_("Sign off a trainee"), "machines_sign_off", "machines.add_authorization"),
    (_("System"), "fabomatic_system", None),
]


@register.inclusion_tag("admin/fabomatic/nav.html", takes_context=True)
def portal_nav(context: template.Context) -> dict:
    request: HttpRequest | None = context.get("request")
    if request is None or not request.user.is_active or not request.user.is_staff:
        return {"links": []}
    links = []
    for label, name, perm in NAV:
        if perm and not request.user.has_perm(perm):
            continue
        url = reverse(name)
        home = url == reverse("admin:index")
        current = request.path == url if home else request.path.startswith(url)
        links.append({"label": label, "url": url, "current": current})
    return {"links": links}


# Apps staff rarely need (Django's groups, the login-attempt records of axes): listed last, folded away.
INTERNAL_APPS = ("auth", "axes")


@register.filter
def staff_apps(app_list: list[dict], internal: bool = False) -> list[dict]:
    """The admin index's apps that staff use every day, or with ``internal`` the others."""
    return [app for app in app_list if (app["app_label"] in INTERNAL_APPS) == internal]


@register.filter
def hours(value: float | None) -> str:
    """The portal's one hours format, h:mm (as the hour meter reads)."""
    return format_hours(value)


@register.filter
def short_dt(value: datetime | None) -> str:
    """The portal's one date-and-time format, as in the lists' columns."""
    return short_datetime(value)


@register.simple_tag(takes_context=True)
def login_options(context: template.Context) -> dict:
    """What the login page offers: the single sign-on button (and the provider's name), and whether the password form
    shows (always, unless OIDC_PASSWORD_LOGIN is off: then only at ?password=1, the superusers' break-glass)."""
    from members import sso

    request = context.get("request")
    asked = request is not None and request.GET.get("password") == "1"
    return {
        "sso": sso.enabled(),
        "provider": sso.provider_name(),
        "password_form": sso.password_login_allowed() or asked,
        "password_allowed": sso.password_login_allowed(),
    }
