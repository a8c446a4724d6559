"""Domain rules that span machines, members and history.

Kept as plain functions so that the bridge, the portal and the management commands share them.
Every function here is O(1) in the length of the usage history.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from integrations import outbox
from members.models import Member

from .models import Authorization, Intervention, Machine, MachineType, MaintenancePlan, Use
from .models import Refusal as RefusalRow

logger = logging.getLogger(__name__)

# --- What a board can really report ---------------------------------------------------------------
#
# A duration comes from the board's clock and is untrusted. It is plausible when it fits both
# - the auto-logoff the board enforces (its type's ``logoff_minutes``, checked every second on the board) plus
#   LOGOFF_SLACK_S, when the type has one; and
# - the time the session can have lasted by the backend's own clock (since the use was opened live, or since the
#   board was last heard from live before a replay, or since the machine's previous use ended) plus SLACK_S.
# An implausible duration is recorded on a flagged use that the meter does not count until staff accept it.

LOGOFF_SLACK_S = 120
SLACK_S = 60


class Level(enum.IntEnum):
    """User levels on the board's own scale (docs/protocol.md §1.4)."""

    INVALID = 0
    NORMAL = 1
    STAFF = 2  # may record maintenance, not blocked by "maintenance needed"


# Why a card is refused (kept with each refused ``checkuser``, machines.models.Refusal).
Refusal = RefusalRow.Reason

_READ: Any = object()  # "not given: read it"


@dataclass(frozen=True)
class AccessDecision:
    allowed: bool
    level: Level
    refusal: str | None = None


def board_level(member: Member) -> Level:
    """Level 2 only for roles that may record maintenance (M2): it passes the board's "maintenance needed" lock."""
    return Level.STAFF if member.role.is_staff_level else Level.NORMAL


def check_access(
    member: Member,
    machine: Machine,
    *,
    authorization: Authorization | None = _READ,
    lock: str | None = _READ,
    now: datetime | None = None,
) -> AccessDecision:
    """May this member use this machine? The old backend's order (docs/protocol.md §2.2) with the safety locks.

    1. member disabled, inactive or erased: refused;
    2. below level 2 on a machine locked by an out-of-order fault report or a pending check after use: refused
       (staff pass, as the board's "maintenance needed" lets level 2 pass);
    3. role *authorize all*: allowed, even on a blocked machine;
    4. machine blocked: refused;
    5. type without authorization: allowed;
    6. the member's authorization: allowed unless it lapsed (expired); none: refused.

    ``authorization`` (the member's row for this machine or None) and ``lock`` (``safety.lock_reason``): when the
    caller already read them (the bridge's one query); otherwise read here.
    """
    if member.disabled or not member.is_active or member.deleted_at is not None:
        return AccessDecision(False, Level.INVALID, Refusal.DISABLED)
    level = board_level(member)
    if level < Level.STAFF:
        if lock is _READ:
            from .safety import lock_reason

            lock = lock_reason(machine.pk)
        if lock:
            return AccessDecision(False, Level.INVALID, lock)
    if member.role.authorize_all:
        return AccessDecision(True, level)
    if machine.blocked:
        return AccessDecision(False, Level.INVALID, Refusal.BLOCKED)
    if not machine.type.requires_authorization:
        return AccessDecision(True, level)
    if authorization is _READ:
        authorization = Authorization.objects.filter(member=member, machine=machine).only("expires_at").first()
    if authorization is None:
        return AccessDecision(False, Level.INVALID, Refusal.NOT_AUTHORIZED)
    if authorization.is_expired(now):
        return AccessDecision(False, Level.INVALID, Refusal.EXPIRED)
    return AccessDecision(True, level)


def board_refusal(decision: AccessDecision, machine: Machine, *, due: bool | None = None) -> str | None:
    """Why the board itself refuses a card that ``check_access`` allows (docs/protocol.md §2.2 steps 2–3, §9.3):
    a blocked machine ("Blocked by admins", every level), or maintenance due below level 2 ("Blocked for
    maintenance"). The reply stays "allowed" (the board decides, M5); the refusal is kept with this reason.
    ``due``: whether a plan item is due, when the caller already read it. (A lock also shows as maintenance, but
    ``check_access`` already refuses level 1 on a locked machine.)"""
    if not decision.allowed:
        return None
    if machine.blocked:
        return Refusal.BLOCKED
    if decision.level < Level.STAFF and (bool(due_plans(machine)) if due is None else due):
        return Refusal.MAINTENANCE_DUE
    return None


def may_use_filter(machine: Machine, *, member: str = "", now: datetime | None = None) -> Q:
    """``check_access`` as a database filter on members (``member``: the path to the member, e.g. "member__"), for
    lists that must be paged in SQL (the board's card cache). tests/test_access_rule.py proves the two agree on
    every combination of the inputs."""
    from .safety import lock_reason

    now = now or timezone.now()
    active = Q(**{f"{member}disabled": False, f"{member}is_active": True, f"{member}deleted_at__isnull": True})
    if lock_reason(machine.pk):
        active &= Q(**{f"{member}role__maintenance": True})
    if machine.blocked:
        return active & Q(**{f"{member}role__authorize_all": True})
    if not machine.type.requires_authorization:
        return active
    authorized = Q(**{f"{member}authorizations__machine": machine}) & (
        Q(**{f"{member}authorizations__expires_at__isnull": True})
        | Q(**{f"{member}authorizations__expires_at__gt": now})
    )
    return active & (Q(**{f"{member}role__authorize_all": True}) | authorized)


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
    return True, first.short_label


@transaction.atomic
def record_interventions(
    *,
    machine: Machine,
    member: Member,
    plans: list[MaintenancePlan] | None = None,
    replay: bool = False,
    when: datetime | None = None,
    note: str = "",
) -> list[Intervention]:
    """Record maintenance done: one intervention per due plan item (or per given item); resets their counters."""
    machine.refresh_from_db(fields=["hours"])
    when = when or timezone.now()
    items = due_plans(machine) if plans is None else plans
    reading = meter_at(machine, when)
    done = [
        Intervention(
            plan=plan,
            machine=machine,
            member=member,
            performed_at=when,
            machine_hours=reading,
            replay=replay,
            note=note,
        )
        for plan in items
    ]
    Intervention.objects.bulk_create(done)
    MaintenancePlan.objects.filter(pk__in=[p.pk for p in items]).update(done_at_hours=reading, done_at=when)
    return done


def duration_limit(machine_type: MachineType) -> int | None:
    """The longest session the board lets run on this type (its auto-logoff), in seconds; None without one."""
    return machine_type.logoff_minutes * 60 + LOGOFF_SLACK_S if machine_type.logoff_minutes else None


@dataclass(frozen=True)
class Implausible:
    flag: Use.Flag
    plausible_max: int  # seconds


def judge_duration(
    seconds: int, machine_type: MachineType, *, since: datetime | None, now: datetime
) -> Implausible | None:
    """Why a duration reported by a board cannot be true, or None when it can.

    ``since``: the earliest moment the session can have started by the backend's clock (None: unknown).
    """
    limit = duration_limit(machine_type)
    if limit is not None and seconds > limit:
        return Implausible(Use.Flag.BEYOND_LOGOFF, limit)
    if since is not None:
        window = max(0, int((now - since).total_seconds())) + SLACK_S
        if seconds > window:
            return Implausible(Use.Flag.BEYOND_WINDOW, window)
    return None


# --- The hour meter and the maintenance counters -------------------------------------------------------
#
# Definition (what recount_machine() derives from the history, and what every incremental change keeps):
#   machine.hours            = hours_offset + Σ duration of its closed uses / 3600
#   meter at time T          = hours_offset + Σ duration of its closed uses started at or before T / 3600
#   plan.done_at_hours       = meter at plan.done_at (its latest intervention), or hours_offset if never done
#   intervention.machine_hours = meter at its performed_at
# A flagged use has duration 0 until staff accept it, so it counts nowhere.


def add_machine_seconds(machine_id: int, seconds: float, *, started_at: datetime | None = None) -> None:
    """Move the hour meter atomically (never read-modify-write: the bridge and the portal both write).

    ``started_at``: when the added use started. Maintenance recorded after that moment counted from a meter that
    did not yet include it; by the definition above the use counts before that maintenance, so those readings
    move too (rare: maintenance recorded while the machine was in use).
    """
    if not seconds:
        return
    hours = seconds / 3600
    Machine.objects.filter(pk=machine_id).update(hours=F("hours") + hours)
    if started_at is not None:
        MaintenancePlan.objects.filter(machine_id=machine_id, done_at__gte=started_at).update(
            done_at_hours=F("done_at_hours") + hours
        )
        Intervention.objects.filter(machine_id=machine_id, performed_at__gte=started_at).update(
            machine_hours=F("machine_hours") + hours
        )
    outbox.maintenance_due(machine_id)  # a plan item the meter just took past its interval


def begin_use(
    *,
    member: Member,
    machine_id: int,
    started_at: datetime,
    last_seen: datetime,
    ended_at: datetime | None = None,
    replay: bool = False,
    **fields: Any,
) -> Use:
    """Record a use that opened at ``started_at`` (still open, or already closed at ``ended_at`` with no duration
    yet: :func:`close_use` closes it). Every path that opens a use comes here, so the member's training that lapses
    when unused counts again from this use (``safety.stamp_use``; a lapsed one is not revived)."""
    from .safety import stamp_use

    use = Use.objects.create(
        member=member,
        machine_id=machine_id,
        started_at=started_at,
        last_seen=last_seen,
        ended_at=ended_at,
        replay=replay,
        **fields,
    )
    stamp_use(member.pk, machine_id, started_at)
    outbox.use_started(use)
    return use


def use_closed(use: Use, *, check_after_use: bool | None = None) -> None:
    """What every closing of a use does besides the meter: a type that wants a check after use gets one, once per
    use (``safety.require_check``; a duplicate or replayed close closes nothing, so it opens nothing).
    ``check_after_use``: the type's flag when the caller already read it (the bridge), else read."""
    from .safety import require_check

    require_check(use, wanted=check_after_use)
    outbox.use_ended(use)


def close_use(
    use: Use, *, ended_at: datetime, last_seen: datetime | None = None, check_after_use: bool | None = None
) -> Use:
    """Close an open use and add its duration to the machine's hour meter, exactly once.

    A flagged use (its start was implausible) closes with duration 0: staff decide what it counts.
    ``check_after_use``: the machine type's flag, when the caller already read it (see :func:`use_closed`).
    """
    duration = 0 if use.flag else max(0, round((ended_at - use.started_at).total_seconds()))
    updated = Use.objects.filter(pk=use.pk, ended_at__isnull=True).update(
        ended_at=ended_at, duration=duration, last_seen=last_seen or max(ended_at, use.last_seen)
    )
    if updated:  # only the caller that actually closed it moves the meter
        add_machine_seconds(use.machine_id, duration, started_at=use.started_at)
        use.ended_at, use.duration = ended_at, duration
        use.last_seen = last_seen or max(ended_at, use.last_seen)
        use_closed(use, check_after_use=check_after_use)
    return use


def close_flagged(
    use: Use, *, ended_at: datetime, verdict: Implausible, reported: int, check_after_use: bool | None = None
) -> Use:
    """Close an open use whose closing duration is implausible: on record, flagged, not on the meter."""
    updated = Use.objects.filter(pk=use.pk, ended_at__isnull=True).update(
        ended_at=ended_at,
        duration=0,
        last_seen=max(ended_at, use.last_seen),
        flag=verdict.flag,
        reported_duration=reported,
        plausible_max=verdict.plausible_max,
    )
    if updated:
        use.ended_at, use.duration, use.flag = ended_at, 0, verdict.flag
        use.reported_duration, use.plausible_max = reported, verdict.plausible_max
        use_closed(use, check_after_use=check_after_use)
        logger.warning(
            "machine %s: use %s flagged, reported %s s (%s, plausible at most %s s)",
            use.machine_id,
            use.pk,
            reported,
            verdict.flag,
            verdict.plausible_max,
        )
    return use


def record_flagged_use(
    *, member: Member, machine_id: int, at: datetime, reported: int, verdict: Implausible, closed: bool, replay: bool
) -> Use:
    """A use whose reported duration cannot be true, recorded at ``at`` (open: someone is on the machine now; closed:
    a session reported after the fact) with duration 0: on record and shown to staff, on the meter only once they
    accept it."""
    use = begin_use(
        member=member,
        machine_id=machine_id,
        started_at=at,
        ended_at=at if closed else None,
        duration=0 if closed else None,
        last_seen=at,
        replay=replay,
        flag=verdict.flag,
        reported_duration=reported,
        plausible_max=verdict.plausible_max,
    )
    if closed:
        use_closed(use)
    logger.warning(
        "machine %s: use %s flagged, reported %s s (%s, plausible at most %s s)",
        machine_id,
        use.pk,
        reported,
        verdict.flag,
        verdict.plausible_max,
    )
    return use


def recount_machine(machine_id: int) -> None:
    """Re-derive the hour meter, the plans' counters and the interventions' readings from the history.

    Every staff correction ends with it, so what is due always equals what the history says. O(uses of this
    machine): fine for corrections, never on the bridge's request path.
    """
    with transaction.atomic():
        machine = Machine.objects.select_for_update().get(pk=machine_id)
        closed = list(
            Use.objects.filter(machine_id=machine_id, ended_at__isnull=False, duration__gt=0)
            .order_by("started_at")
            .values_list("started_at", "duration")
        )
        starts = [start for start, _ in closed]
        sums = [0, *itertools.accumulate(seconds or 0 for _, seconds in closed)]  # never None (duration__gt=0)

        def meter(when: datetime) -> float:
            return machine.hours_offset + sums[bisect.bisect_right(starts, when)] / 3600

        hours = machine.hours_offset + sums[-1] / 3600
        if abs(hours - machine.hours) > 1e-9:
            Machine.objects.filter(pk=machine_id).update(hours=hours)
        latest: dict[int, datetime] = {}
        changed = []
        for item in Intervention.objects.filter(machine_id=machine_id).only("pk", "plan_id", "performed_at"):
            latest[item.plan_id] = max(latest.get(item.plan_id, item.performed_at), item.performed_at)
            reading = meter(item.performed_at)
            item.machine_hours = reading
            changed.append(item)
        Intervention.objects.bulk_update(changed, ["machine_hours"], batch_size=500)
        for plan in MaintenancePlan.objects.filter(machine_id=machine_id):
            done_at = latest.get(plan.pk)
            done_at_hours = meter(done_at) if done_at is not None else machine.hours_offset
            if plan.done_at != done_at or abs(plan.done_at_hours - done_at_hours) > 1e-9:
                MaintenancePlan.objects.filter(pk=plan.pk).update(done_at=done_at, done_at_hours=done_at_hours)
        outbox.maintenance_due(machine_id)


def meter_differences(machine: Machine) -> list[str]:
    """What the stored meter and counters would change by a recount (empty when consistent). For checks."""
    with transaction.atomic():
        sid = transaction.savepoint()
        before = _meter_state(machine.pk)
        recount_machine(machine.pk)
        after = _meter_state(machine.pk)
        transaction.savepoint_rollback(sid)
    return [f"{key}: {before[key]!r} → {after[key]!r}" for key in before if not _same(before[key], after[key])]


def _meter_state(machine_id: int) -> dict[str, object]:
    state: dict[str, object] = {"hours": Machine.objects.get(pk=machine_id).hours}
    for pk, done_at, hours in MaintenancePlan.objects.filter(machine_id=machine_id).values_list(
        "pk", "done_at", "done_at_hours"
    ):
        state[f"plan {pk} done_at"] = done_at
        state[f"plan {pk} done_at_hours"] = hours
    for pk, hours in Intervention.objects.filter(machine_id=machine_id).values_list("pk", "machine_hours"):
        state[f"intervention {pk}"] = hours
    return state


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) < 1e-6
    return a == b


@transaction.atomic
def set_hour_meter(machine: Machine, hours: float) -> None:
    """Staff set the meter (e.g. the hours a machine had before the system). Maintenance counters keep their
    hours since the last intervention: they count the history, not the meter's starting point."""
    seconds = Use.objects.filter(machine_id=machine.pk, ended_at__isnull=False).aggregate(s=Sum("duration"))["s"]
    Machine.objects.filter(pk=machine.pk).update(hours_offset=hours - (seconds or 0) / 3600)
    recount_machine(machine.pk)


@transaction.atomic
def correct_use(use: Use, *, started_at: datetime, ended_at: datetime | None) -> Use:
    """A staff correction of a use: it counts as corrected (a flag is cleared) and the meter is recounted."""
    use = Use.objects.select_for_update().get(pk=use.pk)
    was_open = use.ended_at is None
    use.started_at = started_at
    use.ended_at = ended_at
    use.duration = max(0, round((ended_at - started_at).total_seconds())) if ended_at else None
    if ended_at:
        use.last_seen = max(use.last_seen, ended_at)
    use.flag, use.plausible_max = Use.Flag.NONE, None
    use.save(update_fields=["started_at", "ended_at", "duration", "last_seen", "flag", "plausible_max"])
    recount_machine(use.machine_id)
    if was_open and ended_at is not None:  # staff ended an open use
        use_closed(use)
    return use


@transaction.atomic
def accept_flagged(use: Use, *, reported: bool) -> Use:
    """Staff accept a flagged use: it counts the board's reported duration (``reported``) or the time the
    backend observed between its start and end. The meter and the counters are recounted."""
    use = Use.objects.select_for_update().get(pk=use.pk)
    if not use.flag or use.ended_at is None:
        return use
    if reported and use.reported_duration is not None:
        seconds = min(use.reported_duration, int(timedelta.max.total_seconds()) // 2)
        use.started_at = use.ended_at - timedelta(seconds=seconds)
        use.duration = seconds
    else:
        use.duration = max(0, round((use.ended_at - use.started_at).total_seconds()))
    use.flag, use.plausible_max = Use.Flag.NONE, None
    use.save(update_fields=["started_at", "duration", "flag", "plausible_max"])
    recount_machine(use.machine_id)
    return use


@transaction.atomic
def delete_use(use: Use) -> None:
    """Delete a use record; the meter and the counters are recounted without it."""
    machine_id = use.machine_id
    use.delete()
    recount_machine(machine_id)


@transaction.atomic
def register_use(*, member: Member, machine: Machine, started_at: datetime, ended_at: datetime) -> Use:
    """A use entered by staff after the fact (a board that never reported it): closed, and on the hour meter."""
    duration = max(0, round((ended_at - started_at).total_seconds()))
    use = begin_use(
        member=member,
        machine_id=machine.pk,
        started_at=started_at,
        ended_at=ended_at,
        last_seen=ended_at,
        duration=duration,
    )
    recount_machine(machine.pk)  # no check after use: staff who enter a past use know the machine's state
    return use


def meter_at(machine: Machine, when: datetime) -> float:
    """The machine's hour meter at ``when``: today's reading less the closed use started since (machine index)."""
    later = Use.objects.filter(machine=machine, started_at__gt=when, duration__isnull=False).aggregate(
        s=Sum("duration")
    )["s"]
    hours = Machine.objects.filter(pk=machine.pk).values_list("hours", flat=True).first() or 0.0
    return hours - (later or 0) / 3600


@transaction.atomic
def record_manual_intervention(
    *, plan: MaintenancePlan, member: Member, when: datetime, note: str = ""
) -> Intervention:
    """Maintenance entered by staff, possibly back-dated; it resets the plan's counter only if it is the latest."""
    machine = Machine.objects.get(pk=plan.machine_id)
    intervention = Intervention.objects.create(
        plan=plan, machine=machine, member=member, performed_at=when, machine_hours=meter_at(machine, when), note=note
    )
    recount_machine(machine.pk)
    intervention.refresh_from_db(fields=["machine_hours"])
    return intervention


@transaction.atomic
def delete_intervention(intervention: Intervention) -> None:
    """Delete an intervention recorded by mistake; the plan's counter falls back to the previous one."""
    machine_id = intervention.machine_id
    intervention.delete()
    recount_machine(machine_id)
