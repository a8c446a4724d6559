"""``{% boards_behind as n %}``: how many boards run older firmware than the lab's newest image (the dashboard's
notice; telemetry/health.py, cached 30 s)."""

from __future__ import annotations

from django import template

from telemetry import health

register = template.Library()


@register.simple_tag(takes_context=True)
def boards_behind(context: template.Context) -> int:
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.has_perm("telemetry.view_board"):
        return 0
    return health.behind_count()
