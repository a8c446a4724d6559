"""The search of the history lists (uses, interventions): by member or machine name, on the indexed ids.

The names are looked up in the small tables first; the history is then filtered on ``member_id``/``machine_id``.
How depends on how many rows match, because the lists show the newest 50 (``ORDER BY started_at DESC``):

- few (a member's or machine's own history, < ``BROAD`` rows): through the member and machine indexes, then a sort of
  those rows;
- many (a common name: "Rossi" or "Member1" matched 1,111 members and 555,000 of 1,000,000 uses): sorting them all
  took 1.3-3 s on SQLite. The ids are then compared as ``member_id + 0``, which no index serves, so the database
  walks the list's own time index newest first and stops after a page: ~1 ms.

Deciding costs one COUNT capped at ``BROAD`` on the covering member/machine indexes (~1 ms).
"""

from __future__ import annotations

from django.db.models import F, IntegerField, Q, QuerySet
from django.db.models.expressions import ExpressionWrapper

from members.models import Member

from .models import Machine

BROAD = 5000  # matching rows above which the time index is walked instead of sorting the matches


def _ids(term: str) -> tuple[list[int], list[int]]:
    members = Member.objects.filter(
        Q(first_name__icontains=term) | Q(last_name__icontains=term) | Q(email__icontains=term)
    ).values_list("pk", flat=True)
    machines = Machine.objects.filter(name__icontains=term).values_list("pk", flat=True)
    return list(members), list(machines)


def search_history(queryset: QuerySet, search_term: str) -> QuerySet:
    """``queryset`` (uses or interventions) restricted to rows whose member or machine matches every word."""
    words = search_term.split()
    if not words:
        return queryset
    indexed, unindexed = Q(), Q()
    for word in words:
        members, machines = _ids(word)
        indexed &= Q(member_id__in=members) | Q(machine_id__in=machines)
        unindexed &= Q(member_plain__in=members) | Q(machine_plain__in=machines)
    if queryset.filter(indexed).order_by().values("pk")[:BROAD].count() < BROAD:
        return queryset.filter(indexed)
    plain = {
        "member_plain": ExpressionWrapper(F("member_id") + 0, output_field=IntegerField()),
        "machine_plain": ExpressionWrapper(F("machine_id") + 0, output_field=IntegerField()),
    }
    return queryset.alias(**plain).filter(unindexed)
