"""``{% live_dashboard as dashboard %}``: the admin index's tiles, without subclassing AdminSite."""

from __future__ import annotations

from django import template

from machines.dashboard.tiles import page_context

register = template.Library()


@register.simple_tag
def live_dashboard() -> dict:
    return page_context()
