"""``{% safety_dashboard as safety %}``: the dashboard's "Open faults" and "Latest refusals" panels."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import template
from django.utils import timezone

from machines.models import FaultReport, Refusal

register = template.Library()

OPEN_FAULTS = 20  # newest first; the list page has the rest
REFUSALS = 10
REFUSALS_HOURS = 24


@register.simple_tag
def safety_dashboard() -> dict[str, Any]:
    """Open fault reports (partial index ``fault_open``) and the last day's refusals (index ``refusal_at``)."""
    since = timezone.now() - timedelta(hours=REFUSALS_HOURS)
    open_faults = FaultReport.objects.filter(closed_at__isnull=True).select_related("machine")
    return {
        "faults": list(open_faults.order_by("-created_at")[:OPEN_FAULTS]),
        "fault_count": open_faults.count(),
        "refusals": list(
            Refusal.objects.filter(at__gte=since).select_related("machine", "member").order_by("-at")[:REFUSALS]
        ),
        "refusals_hours": REFUSALS_HOURS,
    }
