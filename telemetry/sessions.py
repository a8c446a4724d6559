"""The use lifecycle: ``startuse``, ``inuse`` and ``stopuse`` of the boards, replays and duplicates, orphans.

Idempotent under every sequence the firmware's replays and duplicates produce (docs/protocol.md §3.5, §8; the
README's bridge section lists them):

- ``startuse`` with the same member's use already open is the same session (a duplicate or replay, S15): nothing new.
  With another member's use open, that one was orphaned by a board reboot (S18): it is closed at its last heartbeat.
  A *replayed* ``startuse`` opens nothing: it carries no time, and the session it began is recorded from what follows
  it, the live ``inuse`` (still running: opened at now − duration, S17) or its replayed ``stopuse`` (ended offline).
  That makes a replayed start and the live original it may copy indistinguishable, hence harmless.
- ``inuse`` without an open use opens one at now − duration (S17).
- ``stopuse`` closes the open use at start + duration (hours counted once, by ``close_use``). With nothing open it
  records a closed session of that duration ending now (an offline session replayed, S14) unless the duration is 0
  (a remote stop on an idle machine, S21), the card is "no card", or it is a copy of the machine's latest use: the
  same member, the same duration, and that use was still being reported when the board last spoke live (S16, and a
  whole session replayed after its live original). Replayed sessions of one outage are laid end to end, ending now.
- Every duration is judged by ``services.judge_duration`` (auto-logoff, and the time the session can have lasted by
  our clock: since the use opened live, or since the board was last heard live before a replay, or since the
  previous use ended). An implausible one is recorded on a flagged use that counts nothing until staff accept it.
- Disabled, deleted or inactive members (S7): their ``startuse`` is refused (``request_ok`` false) and no use is
  opened or created for them by ``inuse``/``stopuse``; a use that is already open is still closed normally. Members
  who are merely not authorized (an offline whitelist or cache login) are recorded: the machine ran.
- An open use silent for more than ``ORPHAN_SECONDS`` is closed at its last heartbeat + 1 s (S19) by
  :func:`close_orphans`, which the bridge runs periodically.
- Uses are opened by ``services.begin_use`` (the member's training counts from the use, ``safety.stamp_use``) and
  closed by ``services.close_use`` / ``close_flagged`` (a type with a check after use gets one, once per use,
  ``safety.require_check``): copies and duplicates open and close nothing, so they stamp and check nothing either
  (docs/protocol.md §9.4, §9.6).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from machines import services
from machines.models import Machine, Use
from members.models import Member

from . import protocol as p
from .fastpath import card_member, machine_of, open_use, stamps
from .outcome import Outcome

logger = logging.getLogger(__name__)

# A stopuse repeating the machine's latest use (same member, same duration) within this window may be its copy (S16).
# A board's replay buffer survives reboots, so allow for a long outage.
DUPLICATE_WINDOW = timedelta(days=2)
# ...when that use was still being reported this close to the board's last live request.
COPY_SLACK = timedelta(seconds=10)


def start_use(machine_id: int, request: p.StartUse, now: datetime) -> Outcome:
    member = card_member(request.uid)
    if member is None:
        return Outcome(p.simple_reply(False, "Invalid card"))
    if not member.can_use_machines:
        logger.info("machine %s: startuse refused for disabled member %s", machine_id, member.pk)
        return Outcome(p.simple_reply(False, "User disabled"))
    current = open_use(machine_id)
    if current is not None and current.member_id == member.pk:
        # The same session again: a duplicate or a replay of a start the backend answered too late (S15).
        Use.objects.filter(pk=current.pk).update(last_seen=now)
        return Outcome(p.simple_reply(True))
    if request.replay:
        # No time, and possibly a copy of a start we recorded: what follows it records the session (module doc).
        logger.info("machine %s: replayed startuse of member %s opens nothing", machine_id, member.pk)
        return Outcome(p.simple_reply(True))
    if current is not None:
        # Another member's use is still open: the board rebooted without a stopuse (S18).
        services.close_use(current, ended_at=current.last_seen)
    services.begin_use(member=member, machine_id=machine_id, started_at=now, last_seen=now)
    return Outcome(p.simple_reply(True), changed=True)


def in_use(machine_id: int, request: p.InUse, now: datetime) -> Outcome:
    member = card_member(request.uid)
    if member is None:
        return Outcome(p.simple_reply(False, "Invalid card"))
    current = open_use(machine_id)
    if current is not None and current.member_id == member.pk:
        Use.objects.filter(pk=current.pk).update(last_seen=now)
        return Outcome(p.simple_reply(True, "inUse"))
    changed = False
    if current is not None:
        # The board says this member is on; the open use is someone else's orphan.
        services.close_use(current, ended_at=current.last_seen)
        changed = True
    if not member.can_use_machines:
        return Outcome(p.simple_reply(True, "inUse"), changed=changed)
    # A missed startuse, e.g. after a backend restart (S17): the session began `duration` ago, if it can have.
    machine = machine_of(machine_id)
    previous_end = _previous_end(machine_id, current)
    verdict = services.judge_duration(request.duration, machine.type, since=previous_end, now=now)
    if verdict is None:
        start = now - timedelta(seconds=request.duration)
        if previous_end is not None and start < previous_end:  # within the slack: never overlap the previous use
            start = min(previous_end, now)
        services.begin_use(member=member, machine_id=machine_id, started_at=start, last_seen=now)
        return Outcome(p.simple_reply(True, "inUse"), changed=True)
    # Someone is on the machine, but not since when the board says: opened now, flagged for staff.
    services.record_flagged_use(
        member=member,
        machine_id=machine_id,
        at=now,
        reported=request.duration,
        verdict=verdict,
        closed=False,
        replay=False,
    )
    return Outcome(p.simple_reply(True, "inUse"), changed=True, note="flagged")


def _previous_end(machine_id: int, closed: Use | None = None) -> datetime | None:
    """When the machine's latest closed use ended: a new session cannot have started before (one at a time)."""
    if closed is not None and closed.ended_at is not None:
        return closed.ended_at
    latest = Use.objects.filter(machine_id=machine_id, ended_at__isnull=False).order_by("-started_at", "-id").first()
    return latest.ended_at if latest is not None else None


def stop_use(machine_id: int, request: p.StopUse, now: datetime) -> Outcome:
    member = card_member(request.uid)
    done = p.simple_reply(True, f"Duration {request.duration} seconds")
    current = open_use(machine_id)
    changed = False
    if current is not None and (member is None or current.member_id != member.pk):
        # The board's user is not the one on record.
        if member is None:
            # No usable card on the stop (a remote stop after boot): the board's current session is the open one.
            if request.duration == 0:
                return Outcome(done)
            return _close_open(machine_id, current, request, now, done)
        services.close_use(current, ended_at=current.last_seen)  # an orphan (S18)
        current, changed = None, True
    if current is not None:
        return _close_open(machine_id, current, request, now, done)
    if member is None:
        return Outcome(p.simple_reply(False, "Invalid card") if request.uid != p.NO_CARD else done, changed=changed)
    if request.duration == 0 or not member.can_use_machines:
        return Outcome(done, changed=changed)  # a remote stop on an idle machine (S21): nothing to record
    outcome = _record_session(machine_id, member, request, now)
    outcome.reply = done
    outcome.changed = outcome.changed or changed
    return outcome


def _close_open(machine_id: int, use: Use, request: p.StopUse, now: datetime, done: p.Reply) -> Outcome:
    """Close the open use with the board's duration, if it fits the time since the use was opened."""
    machine = machine_of(machine_id)
    verdict = services.judge_duration(request.duration, machine.type, since=use.started_at, now=now)
    if use.flag or verdict is not None:
        if verdict is None:  # opened flagged (its start was implausible): it stays for staff to decide
            verdict = services.Implausible(Use.Flag(use.flag), int((now - use.started_at).total_seconds()))
        services.close_flagged(
            use, ended_at=now, verdict=verdict, reported=request.duration, check_after_use=machine.type.check_after_use
        )
        return Outcome(done, changed=True, note="flagged")
    end = use.started_at + timedelta(seconds=request.duration)
    if end > now:  # the board's clock ran a little ahead of ours (within the slack): the session ends now
        use.started_at, end = now - timedelta(seconds=request.duration), now
        Use.objects.filter(pk=use.pk).update(started_at=use.started_at)
    services.close_use(
        use, ended_at=end, last_seen=max(now, use.last_seen), check_after_use=machine.type.check_after_use
    )
    return Outcome(done, changed=True)


def _record_session(machine_id: int, member: Member, request: p.StopUse, now: datetime) -> Outcome:
    """A session the backend never saw open (S14): ``duration`` seconds that ended by now, unless it is a copy."""
    machine = machine_of(machine_id)
    floor = _live_floor(machine) if request.replay else None
    latest = Use.objects.filter(machine_id=machine_id).order_by("-started_at", "-id").first()
    if latest is not None and _is_copy(latest, member, request.duration, floor, now):
        logger.info("machine %s: stopuse of %s s is a copy of use %s", machine_id, request.duration, latest.pk)
        return Outcome(None, note="copy")
    # The sessions of this outage replayed before this one happened before it: they may have to move back.
    run = _replayed_run(machine_id, floor) if request.replay else []
    placed = sum(use.duration or 0 for use in run)
    if run:  # the run starts after the use before it
        before = Use.objects.filter(machine_id=machine_id, started_at__lt=run[-1].started_at, ended_at__isnull=False)
        last_before = before.order_by("-started_at", "-id").first()
        earlier = last_before.ended_at if last_before is not None else None
    else:  # no use is open here: the latest one is the previous session
        earlier = latest.ended_at if latest is not None else None
    since = max((t for t in (floor, earlier) if t is not None), default=None)
    verdict = services.judge_duration(request.duration, machine.type, since=None, now=now)
    if verdict is None and since is not None:
        window = services.judge_duration(request.duration + placed, machine.type, since=since, now=now)
        if window is not None:
            verdict = services.Implausible(window.flag, max(0, window.plausible_max - placed))
    if verdict is not None:
        services.record_flagged_use(
            member=member,
            machine_id=machine_id,
            at=now,
            reported=request.duration,
            verdict=verdict,
            closed=True,
            replay=request.replay,
        )
        return Outcome(None, changed=True, note="flagged")
    start = now - timedelta(seconds=request.duration)
    use = services.begin_use(
        member=member, machine_id=machine_id, started_at=start, last_seen=now, replay=request.replay
    )
    services.close_use(use, ended_at=now, check_after_use=machine.type.check_after_use)
    if _pack_back(run, start):
        services.recount_machine(machine_id)
    return Outcome(None, changed=True)


def _live_floor(machine: Machine) -> datetime | None:
    """The last live request before this replay: every event in the board's buffer happened after it (the firmware
    sends nothing live while its buffer holds anything), so a replayed session must fit between it and now."""
    known = [t for t in (machine.heard_live_at, stamps.live_at(machine.pk)) if t is not None]
    return max(known) if known else None


def _is_copy(latest: Use, member: Member, duration: int, floor: datetime | None, now: datetime) -> bool:
    """The machine's latest use, by the same member with the same duration, still being reported when the board
    last spoke live: this stopuse is its copy (a duplicate, or the replay of a stop whose reply came too late)."""
    if latest.ended_at is None or latest.member_id != member.pk:
        return False
    if duration not in (latest.duration, latest.reported_duration):
        return False
    if now - latest.ended_at > DUPLICATE_WINDOW:
        return False
    return floor is None or latest.ended_at >= floor - COPY_SLACK


def _replayed_run(machine_id: int, floor: datetime | None) -> list[Use]:
    """The sessions already replayed from the board's buffer since it last spoke live, newest first."""
    if floor is None:
        return []
    run = []
    for use in Use.objects.filter(machine_id=machine_id, started_at__gte=floor).order_by("-started_at", "-id")[:40]:
        if not use.replay or use.ended_at is None or use.flag:
            break
        run.append(use)
    return run


def _pack_back(run: list[Use], start: datetime) -> bool:
    """Lay the earlier replayed sessions end to end before ``start`` (replays carry no time: one session at a
    time is all we know). Returns whether any moved."""
    moved = False
    for use in run:
        if use.ended_at is not None and use.ended_at > start:
            use.ended_at, use.started_at = start, start - timedelta(seconds=use.duration or 0)
            Use.objects.filter(pk=use.pk).update(started_at=use.started_at, ended_at=use.ended_at)
            moved = True
        start = use.started_at
    return moved


# --- Housekeeping ------------------------------------------------------------------------------------------


def close_orphans(now: datetime | None = None) -> list[int]:
    """Close open uses silent for more than ORPHAN_SECONDS at their last heartbeat + 1 s (S19).

    Returns the machine ids whose use was closed (to broadcast). Uses the partial index on open uses.
    """
    now = now or timezone.now()
    limit = now - timedelta(seconds=settings.ORPHAN_SECONDS)
    closed = []
    for use in Use.objects.filter(ended_at__isnull=True, last_seen__lt=limit).order_by("last_seen")[:500]:
        with transaction.atomic():
            services.close_use(use, ended_at=use.last_seen + timedelta(seconds=1), last_seen=use.last_seen)
        logger.info("closed orphan use %s on machine %s", use.pk, use.machine_id)
        closed.append(use.machine_id)
    return closed
