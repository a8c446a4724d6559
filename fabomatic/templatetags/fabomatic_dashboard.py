"""``{% live_dashboard as dashboard %}``: the admin index's tiles, without subclassing AdminSite."""

from __future__ import annotations

from django import template

from fabomatic.dashboard import dashboard_context

register = template.Library()


@register.simple_tag
def live_dashboard() -> dict:
    return dashboard_context()
