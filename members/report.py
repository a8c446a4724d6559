"""The member data report: everything the backend holds about one person, on one page (GDPR right of access).

The per-member Excel exports of uses and interventions (portal lists filtered by member) complete it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db.models import Count, Max, Min, Sum

from machines.models import Authorization, Intervention, Refusal, Use

from .models import Card, Member


@dataclass
class MachineUsage:
    machine: str
    uses: int
    seconds: int


@dataclass
class MemberReport:
    member: Member
    cards: list[Card]
    authorizations: list[Authorization]
    use_count: int
    total_seconds: int
    first_use: datetime | None
    last_use: datetime | None
    by_machine: list[MachineUsage] = field(default_factory=list)
    intervention_count: int = 0
    last_intervention: datetime | None = None
    refusal_count: int = 0  # refused swipes, kept REFUSAL_RETENTION_DAYS
    last_refusal: datetime | None = None
    retention_days: int = 365


def member_report(member: Member) -> MemberReport:
    """Gather the report with a fixed number of aggregate queries, whatever the member's history."""
    uses = Use.objects.filter(member=member)
    totals = uses.aggregate(n=Count("pk"), seconds=Sum("duration"), first=Min("started_at"), last=Max("started_at"))
    per_machine = (
        uses.values("machine__name")
        .annotate(n=Count("pk"), seconds=Sum("duration"))
        .order_by("-seconds", "machine__name")
    )
    interventions = Intervention.objects.filter(member=member).aggregate(n=Count("pk"), last=Max("performed_at"))
    refusals = Refusal.objects.filter(member=member).aggregate(n=Count("pk"), last=Max("at"))
    return MemberReport(
        member=member,
        cards=list(member.cards.order_by("-created_at")),
        authorizations=list(member.authorizations.select_related("machine", "trained_by").order_by("machine__name")),
        use_count=totals["n"],
        total_seconds=totals["seconds"] or 0,
        first_use=totals["first"],
        last_use=totals["last"],
        by_machine=[MachineUsage(r["machine__name"], r["n"], r["seconds"] or 0) for r in per_machine],
        intervention_count=interventions["n"],
        last_intervention=interventions["last"],
        refusal_count=refusals["n"],
        last_refusal=refusals["last"],
        retention_days=settings.RETENTION_DAYS,
    )
