"""Domain rules that span machines, members and history.

Kept as plain functions so that the bridge, the portal and the management commands share them.
Every function here is O(1) in the length of the usage history.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import F, Max, Sum
from django.utils import timezone

from members.models import Member

from .models import Authorization, Intervention, Machine, MaintenancePlan, Use


class Level(enum.IntEnum):
    """User levels on the board's own scale (board-protocol §1.4)."""

    INVALID = 0
    NORMAL = 1
    STAFF = 2  # may record maintenance, not blocked by "maintenance needed"


class Refusal(enum.StrEnum):
    DISABLED = "disabled"
    DELETED = "deleted"
    BLOCKED = "blocked"
    NOT_AUTHORIZED = "not_authorized"


@dataclass(frozen=True)
class AccessDecision:
    allowed: bool
    level: Level
    refusal: Refusal | None = None


def board_level(member: Member) -> Level:
    """Level 2 for roles that may record maintenance on a board or that authorize all (M1, M2)."""
    return Level.STAFF if member.role.is_staff_level else Level.NORMAL


def check_access(member: Member, machine: Machine, *, authorized: bool | None = None) -> AccessDecision:
    """May this member use this machine? The order of the old backend (reference §3.1).

    ``authorized``: whether an Authorization row exists, when the caller already read it (the bridge's one query).
    """
    if member.disabled or not member.is_active:
        return AccessDecision(False, Level.INVALID, Refusal.DISABLED)
    if member.deleted_at is not None:
        return AccessDecision(False, Level.INVALID, Refusal.DELETED)
    if member.role.authorize_all:
        return AccessDecision(True, Level.STAFF)
    if machine.blocked:
        return AccessDecision(False, Level.INVALID, Refusal.BLOCKED)
    if not machine.type.requires_authorization:
        return AccessDecision(True, board_level(member))
    if authorized is None:
        authorized = Authorization.objects.filter(member=member, machine=machine).exists()
    if authorized:
        return AccessDecision(True, board_level(member))
    return AccessDecision(False, Level.INVALID, Refusal.NOT_AUTHORIZED)


def may_record_maintenance(member: Member) -> bool:
    return member.can_use_machines and member.role.is_staff_level


def due_plans(machine: Machine, plans: list[MaintenancePlan] | None = None) -> list[MaintenancePlan]:
    """The plan items whose hours since the last intervention exceed their interval, in plan order.

    ``plans``: the machine's plans in plan order, when the caller already read them (the bridge's one query).
    """
    return [plan for plan in (machine.plans.all() if plans is None else plans) if plan.is_due(machine.hours)]


def maintenance_status(machine: Machine, plans: list[MaintenancePlan] | None = None) -> tuple[bool, str]:
    """(due, LCD message of the first due item) for ``checkmachine`` and the dashboard."""
    due = due_plans(machine, plans)
    if not due:
        return False, ""
    first = due[0]
    return True, first.lcd_message or first.description[:16]


@transaction.atomic
def record_interventions(
    *,
    machine: Machine,
    member: Member,
    plans: list[MaintenancePlan] | None = None,
    replay: bool = False,
    when: datetime | None = None,
) -> list[Intervention]:
    """Record maintenance done: one intervention per due plan item (or per given item); resets their counters."""
    machine.refresh_from_db(fields=["hours"])
    when = when or timezone.now()
    items = due_plans(machine) if plans is None else plans
    done = [
        Intervention(
            plan=plan, machine=machine, member=member, performed_at=when, machine_hours=machine.hours, replay=replay
        )
        for plan in items
    ]
    Intervention.objects.bulk_create(done)
    MaintenancePlan.objects.filter(pk__in=[p.pk for p in items]).update(done_at_hours=machine.hours)
    return done


def add_machine_seconds(machine_id: int, seconds: float) -> None:
    """Move the hour meter atomically (never read-modify-write: the bridge and the portal both write)."""
    if seconds:
        Machine.objects.filter(pk=machine_id).update(hours=F("hours") + seconds / 3600)


def close_use(use: Use, *, ended_at: datetime, last_seen: datetime | None = None) -> Use:
    """Close an open use and add its duration to the machine's hour meter, exactly once."""
    duration = max(0, round((ended_at - use.started_at).total_seconds()))
    updated = Use.objects.filter(pk=use.pk, ended_at__isnull=True).update(
        ended_at=ended_at, duration=duration, last_seen=last_seen or max(ended_at, use.last_seen)
    )
    if updated:  # only the caller that actually closed it moves the meter
        add_machine_seconds(use.machine_id, duration)
        use.ended_at, use.duration = ended_at, duration
        use.last_seen = last_seen or max(ended_at, use.last_seen)
    return use


@transaction.atomic
def correct_use(use: Use, *, started_at: datetime, ended_at: datetime | None) -> Use:
    """A staff correction of a use: the hour meter follows the change in closed duration."""
    use = Use.objects.select_for_update().get(pk=use.pk)
    old = (use.duration or 0) if use.ended_at else 0
    use.started_at = started_at
    use.ended_at = ended_at
    use.duration = max(0, round((ended_at - started_at).total_seconds())) if ended_at else None
    if ended_at:
        use.last_seen = max(use.last_seen, ended_at)
    use.save(update_fields=["started_at", "ended_at", "duration", "last_seen"])
    add_machine_seconds(use.machine_id, (use.duration or 0) - old)
    return use


@transaction.atomic
def delete_use(use: Use) -> None:
    """Delete a use record and take its closed duration off the hour meter."""
    add_machine_seconds(use.machine_id, -(use.duration or 0))
    use.delete()


@transaction.atomic
def register_use(*, member: Member, machine: Machine, started_at: datetime, ended_at: datetime) -> Use:
    """A use entered by staff after the fact (a board that never reported it): closed, and on the hour meter."""
    duration = max(0, round((ended_at - started_at).total_seconds()))
    use = Use.objects.create(
        member=member, machine=machine, started_at=started_at, ended_at=ended_at, last_seen=ended_at, duration=duration
    )
    add_machine_seconds(machine.pk, duration)
    return use


def meter_at(machine: Machine, when: datetime) -> float:
    """The machine's hour meter at ``when``: today's reading less the closed use started since (machine index)."""
    later = Use.objects.filter(machine=machine, started_at__gte=when, duration__isnull=False).aggregate(
        s=Sum("duration")
    )["s"]
    return max(0.0, machine.hours - (later or 0) / 3600)


@transaction.atomic
def record_manual_intervention(*, plan: MaintenancePlan, member: Member, when: datetime) -> Intervention:
    """Maintenance entered by staff, possibly back-dated; it resets the plan's counter only if it is the latest."""
    machine = Machine.objects.get(pk=plan.machine_id)
    latest = Intervention.objects.filter(plan=plan).aggregate(m=Max("performed_at"))["m"]
    intervention = Intervention.objects.create(
        plan=plan, machine=machine, member=member, performed_at=when, machine_hours=meter_at(machine, when)
    )
    if latest is None or when >= latest:
        MaintenancePlan.objects.filter(pk=plan.pk).update(done_at_hours=intervention.machine_hours)
    return intervention


@transaction.atomic
def delete_intervention(intervention: Intervention) -> None:
    """Delete an intervention recorded by mistake; the plan's counter falls back to the previous one."""
    plan_id = intervention.plan_id
    intervention.delete()
    previous = Intervention.objects.filter(plan_id=plan_id).order_by("-performed_at").first()
    MaintenancePlan.objects.filter(pk=plan_id).update(done_at_hours=previous.machine_hours if previous else 0.0)
