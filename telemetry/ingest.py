"""Board requests → database rows → the reply the board expects.

Read-only requests from a machine that is online (checkmachine, checkuser of a known card, inuse of the session on
record, alive of a known board) take the fast path: one raw query, no write transaction; their "heard from" stamps are
written in batches (:func:`flush_heartbeats`, every ``FLUSH_EVERY`` s from the bridge's worker).

Every other request is one short transaction: the machine's ``last_seen`` is touched first (one UPDATE, which also
tells whether the machine exists and, on PostgreSQL, locks its row so two bridges serialise per machine), then the
action's work, then commit. Only after the commit does the caller publish the reply and broadcast to the live
dashboard.

Use lifecycle (board-protocol §7; idempotent under the board's replays and duplicates):

- ``startuse`` with the same member's use already open is the same session (a duplicate or replay, S15): nothing new.
  With another member's use open, that one was orphaned by a board reboot (S18): it is closed at its last heartbeat.
- ``inuse`` without an open use opens one at now − duration (S17).
- ``stopuse`` closes the open use at start + duration (hours counted once, by ``close_use``). With nothing open it
  creates a closed use at now − duration (an offline session replayed, S14) unless the duration is 0 (a remote stop on
  an idle machine, S21), the card is "no card", or the machine's latest use is the same member's with the same
  duration (a duplicate stopuse, S16).
- Policy for disabled, deleted or inactive members (S7): their ``startuse`` is refused (``request_ok`` false) and no
  use is opened or created for them by ``inuse``/``stopuse``; a use that is already open is still closed normally.
  Members who are merely not authorized (an offline whitelist or cache login) are recorded: the machine ran.
- An open use silent for more than ``ORPHAN_SECONDS`` is closed at its last heartbeat + 1 s (S19) by
  :func:`close_orphans`, which the bridge runs periodically.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from machines import live, services
from machines.models import Authorization, Machine, MachineType, MaintenancePlan, Use
from members.models import Card, Member, Role, UnknownCard

from . import protocol as p
from .models import Board

logger = logging.getLogger(__name__)

# A stopuse that repeats the machine's latest closed use (same member, same duration) within this window is a
# duplicate (S16). A board's replay buffer survives reboots, so allow for a long outage.
DUPLICATE_WINDOW = timedelta(days=2)
# A replayed stopuse whose start + duration lies in the future moves the session back (its start was stamped late).
FUTURE_SLACK = timedelta(seconds=5)
# Live dashboard heartbeats: at most one per machine per this many seconds.
HEARTBEAT_EVERY = 10.0
# Cards per synccache page read from the database (a reply holds about eight).
SYNC_PAGE = 12


class Unavailable(Exception):
    """The database could not be reached or locked in time."""


@dataclass
class Outcome:
    reply: p.Reply | None
    changed: bool = False  # the machine's dashboard tile changed: broadcast it after the reply
    seen: datetime | None = None  # the machine was heard from at this time
    failed: bool = False  # the database was unavailable: the reply says request_ok false


def handle_message(machine_id: int, request: p.Request) -> p.Reply | None:
    """Process one request and return the reply to publish (None: send nothing). Never raises.

    The synchronous single-request API (the bridge's worker calls :func:`process` and batches the heartbeats itself):
    the fast path's stamps are written at once.
    """
    outcome = process(machine_id, request)
    flush_heartbeats()
    after_reply(machine_id, outcome)
    return outcome.reply


def process(machine_id: int, request: p.Request, *, now: datetime | None = None) -> Outcome:
    """The database work of one request, committed before it returns. Never raises."""
    try:
        return _process(machine_id, request, now or timezone.now())
    except DatabaseError as exc:
        logger.warning("machine %s %s: database unavailable (%s)", machine_id, request.action, exc)
        _drop_broken_connection()
        return Outcome(None if isinstance(request, p.Alive) else p.unavailable_reply(request), failed=True)
    except Exception:
        logger.exception("machine %s %s: failed", machine_id, request.action)
        _drop_broken_connection()
        return Outcome(None if isinstance(request, p.Alive) else p.unavailable_reply(request), failed=True)


def _drop_broken_connection() -> None:
    # A failed connection is reopened on the next request, so the bridge recovers by itself.
    try:
        connection.close()
    except Exception:  # closing a dead connection may fail as well
        logger.debug("closing the database connection failed", exc_info=True)


_last_heartbeat: dict[int, float] = {}


def after_reply(machine_id: int, outcome: Outcome) -> None:
    """Broadcast to the live dashboard, after the reply is out. A channel layer that is down is only logged."""
    try:
        if outcome.changed:
            live.broadcast_machine(machine_id)
            _last_heartbeat[machine_id] = time.monotonic()
        elif outcome.seen is not None:
            now = time.monotonic()
            if now - _last_heartbeat.get(machine_id, -HEARTBEAT_EVERY) >= HEARTBEAT_EVERY:
                _last_heartbeat[machine_id] = now
                live.broadcast_heartbeat(machine_id, outcome.seen)
    except Exception:
        logger.warning("live update for machine %s failed", machine_id, exc_info=True)


def broadcast_batch(outcomes: dict[int, Outcome]) -> None:
    """What after_reply does, for many machines at once: the changed tiles in three queries, one channel-layer call.

    The bridge's live thread calls it with the outcomes it coalesced; a channel layer that is down is only logged.
    """
    now_mono = time.monotonic()
    messages: list[dict] = []
    for machine_id, outcome in outcomes.items():
        if outcome.changed or outcome.seen is None:
            continue
        if now_mono - _last_heartbeat.get(machine_id, -HEARTBEAT_EVERY) >= HEARTBEAT_EVERY:
            _last_heartbeat[machine_id] = now_mono
            messages.append({"type": "machine.heartbeat", "id": machine_id, "last_seen": outcome.seen.isoformat()})
    changed = [machine_id for machine_id, outcome in outcomes.items() if outcome.changed]
    try:
        if changed:
            machines = Machine.objects.select_related("board").prefetch_related("plans").filter(pk__in=changed)
            # Served by the partial unique index on open uses: never scans the history.
            open_uses = {
                use.machine_id: use
                for use in Use.objects.select_related("member").filter(machine_id__in=changed, ended_at__isnull=True)
            }
            now = timezone.now()
            for machine in machines:
                _last_heartbeat[machine.pk] = now_mono
                tile = live.build_tile(machine, open_uses.get(machine.pk), now)
                messages.append({"type": "machine.update", "tile": tile})
        if messages:
            layer = get_channel_layer()
            if layer is not None:
                async_to_sync(_send_all)(layer, messages)
    except Exception:
        logger.warning("live update for machines %s failed", sorted(outcomes)[:20], exc_info=True)


async def _send_all(layer: object, messages: list[dict]) -> None:
    for message in messages:
        await layer.group_send(live.GROUP, message)  # type: ignore[attr-defined]


def _process(machine_id: int, request: p.Request, now: datetime) -> Outcome:
    if isinstance(request, p.SyncCache):  # the only request that does not count as "heard from" (old backend)
        return Outcome(_sync_cache(machine_id, request))
    fast = _FAST.get(type(request))
    if fast is not None:
        outcome = fast(machine_id, request, now)
        if outcome is not None:
            _seen[machine_id] = now  # written by flush_heartbeats() within FLUSH_EVERY
            outcome.seen = now
            return outcome
    with transaction.atomic():
        came_online = _touch(machine_id, now)
        if came_online is None:
            # Unknown machine: nothing recorded; no reply to alive, which the board does not expect (M6).
            return Outcome(None if isinstance(request, p.Alive) else p.unknown_machine_reply())
        outcome = _HANDLERS[type(request)](machine_id, request, now)
    outcome.seen = now
    outcome.changed = outcome.changed or came_online
    return outcome


def _touch(machine_id: int, now: datetime) -> bool | None:
    """Mark the machine heard from now. Returns None for an unknown machine, True if it was offline before."""
    # Raw SQL: this runs for every message, and the ORM's query compilation would cost more than the UPDATE.
    ops = connection.ops
    table = Machine._meta.db_table
    stamp = ops.adapt_datetimefield_value(now)
    since = ops.adapt_datetimefield_value(now - timedelta(seconds=settings.ONLINE_SECONDS))
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET last_seen = %s WHERE id = %s AND last_seen >= %s", [stamp, machine_id, since]
        )
        if cursor.rowcount:
            return False
        cursor.execute(f"UPDATE {table} SET last_seen = %s WHERE id = %s", [stamp, machine_id])
        return True if cursor.rowcount else None


def _machine(machine_id: int) -> Machine:
    return Machine.objects.select_related("type").get(pk=machine_id)


def _card_member(uid: str) -> Member | None:
    """The member holding this active card, with the role: the fields the access rules read (one raw query)."""
    if uid == p.NO_CARD:
        return None
    rows = _fetch(_SQL_CARD, [uid])
    if not rows:
        return None
    member_id, first_name, disabled, active, deleted, role_id, everything, maint = rows[0]
    return Member(
        id=member_id,
        first_name=first_name,
        disabled=bool(disabled),
        is_active=bool(active),
        deleted_at=timezone.now() if deleted else None,  # only its presence matters to the rules
        role=Role(id=role_id, authorize_all=bool(everything), maintenance=bool(maint)),
    )


def _open_use(machine_id: int) -> Use | None:
    """The machine's open use (partial unique index: never scans the history), one raw query."""
    rows = _fetch(_SQL_OPEN_USE, [machine_id])
    if not rows:
        return None
    pk, member_id, started_at, last_seen, replay = rows[0]
    return Use(
        id=pk,
        member_id=member_id,
        machine_id=machine_id,
        started_at=_dt(started_at),
        last_seen=_dt(last_seen),
        ended_at=None,
        replay=bool(replay),
    )


def _dt(value: datetime | str) -> datetime:
    """A datetime column read by a raw query (SQLite returns text in UTC), as an aware datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if timezone.is_aware(value) else value.replace(tzinfo=UTC)


# --- Fast path ------------------------------------------------------------------------------
#
# Most traffic is read-only: checkmachine and checkuser every swipe and every 30 s, inuse heartbeats of the session on
# record, alive from a known board. From a machine already online these are answered from ONE raw query each (the
# ORM's SQL compilation would cost more than the query) and write nothing at once: their "heard from" stamps are kept
# here and written by flush_heartbeats() in one short transaction every FLUSH_EVERY seconds (the worker calls it). A
# request that changes state (a use opened or closed, an intervention, an unknown card, a new board or firmware, a
# machine coming online) returns None here and takes the transactional path: committed before its reply is sent.
# Nothing is cached across requests: a block, an unblock or a new authorization is seen by the next request.

FLUSH_EVERY = 0.5
_seen: dict[int, datetime] = {}  # machine id → heard from at
_use_seen: dict[int, datetime] = {}  # open use id → last inuse
_board_seen: dict[int, tuple[str, str | None, int | None, datetime]] = {}  # machine id → serial, ip, heap, at

_M, _T, _P = Machine._meta.db_table, MachineType._meta.db_table, MaintenancePlan._meta.db_table
_U, _C, _MEM, _R = Use._meta.db_table, Card._meta.db_table, Member._meta.db_table, Role._meta.db_table
_A, _B = Authorization._meta.db_table, Board._meta.db_table

_SQL_MACHINE = f"""
    SELECT m.last_seen >= %s, m.name, m.blocked, m.hours, m.type_id, t.logoff_minutes, t.grace_minutes,
           p.hours_between, p.done_at_hours, p.lcd_message, p.description
    FROM {_M} m JOIN {_T} t ON t.id = m.type_id LEFT JOIN {_P} p ON p.machine_id = m.id
    WHERE m.id = %s ORDER BY p.id"""
_SQL_USER = f"""
    SELECT m.last_seen >= %s, m.blocked, t.requires_authorization,
           mem.id, mem.first_name, mem.disabled, mem.is_active, mem.deleted_at IS NOT NULL,
           r.authorize_all, r.maintenance,
           EXISTS(SELECT 1 FROM {_A} a WHERE a.member_id = mem.id AND a.machine_id = m.id)
    FROM {_M} m JOIN {_T} t ON t.id = m.type_id
    LEFT JOIN {_C} c ON c.uid = %s AND c.active
    LEFT JOIN {_MEM} mem ON mem.id = c.member_id
    LEFT JOIN {_R} r ON r.id = mem.role_id
    WHERE m.id = %s"""
_SQL_INUSE = f"""
    SELECT m.last_seen >= %s, u.id, u.member_id, c.member_id
    FROM {_M} m LEFT JOIN {_U} u ON u.machine_id = m.id AND u.ended_at IS NULL
    LEFT JOIN {_C} c ON c.uid = %s AND c.active
    WHERE m.id = %s"""
_SQL_CARD = f"""
    SELECT mem.id, mem.first_name, mem.disabled, mem.is_active, mem.deleted_at IS NOT NULL,
           r.id, r.authorize_all, r.maintenance
    FROM {_C} c JOIN {_MEM} mem ON mem.id = c.member_id JOIN {_R} r ON r.id = mem.role_id
    WHERE c.uid = %s AND c.active"""
_SQL_OPEN_USE = f"""
    SELECT id, member_id, started_at, last_seen, replay FROM {_U} WHERE machine_id = %s AND ended_at IS NULL"""
_SQL_ALIVE = f"""
    SELECT m.last_seen >= %s, b.firmware FROM {_M} m LEFT JOIN {_B} b ON b.machine_id = m.id WHERE m.id = %s"""


def _fetch(sql: str, params: list) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _online_since(now: datetime) -> object:
    return connection.ops.adapt_datetimefield_value(now - timedelta(seconds=settings.ONLINE_SECONDS))


def _fast_check_machine(machine_id: int, request: p.CheckMachine, now: datetime) -> Outcome | None:
    rows = _fetch(_SQL_MACHINE, [_online_since(now), machine_id])
    if not rows or not rows[0][0]:
        return None  # unknown, or coming online: the transactional path
    _online, name, blocked, hours, type_id, logoff, grace = rows[0][:7]
    plans = [
        MaintenancePlan(hours_between=every, done_at_hours=done, lcd_message=lcd or "", description=text or "")
        for *_, every, done, lcd, text in rows
        if every is not None
    ]
    due, message = services.maintenance_status(Machine(id=machine_id, hours=hours), plans)
    return Outcome(
        p.machine_reply(
            name=name,
            maintenance=due,
            allowed=not blocked,
            logoff=logoff,
            type_id=type_id,
            grace=grace,
            description=message,
        )
    )


def _fast_check_user(machine_id: int, request: p.CheckUser, now: datetime) -> Outcome | None:
    rows = _fetch(_SQL_USER, [_online_since(now), request.uid, machine_id])
    if not rows or not rows[0][0] or rows[0][3] is None:
        return None  # unknown machine or card (recorded for registration), or coming online
    _online, blocked, needs_auth, member_id, first_name, disabled, active, deleted, everything, maint, auth = rows[0]
    member = Member(
        id=member_id,
        first_name=first_name,
        disabled=bool(disabled),
        is_active=bool(active),
        deleted_at=now if deleted else None,  # only its presence matters to check_access
        role=Role(authorize_all=bool(everything), maintenance=bool(maint)),
    )
    machine = Machine(id=machine_id, blocked=bool(blocked), type=MachineType(requires_authorization=bool(needs_auth)))
    return Outcome(_user_reply(member, services.check_access(member, machine, authorized=bool(auth))))


def _fast_in_use(machine_id: int, request: p.InUse, now: datetime) -> Outcome | None:
    rows = _fetch(_SQL_INUSE, [_online_since(now), request.uid, machine_id])
    if not rows or not rows[0][0]:
        return None
    _online, use_id, use_member, card_member = rows[0]
    if use_id is None or card_member is None or use_member != card_member:
        return None  # no session on record, or another member's: opens or closes a use
    _use_seen[use_id] = now
    return Outcome(p.simple_reply(True, "inUse"))


def _fast_alive(machine_id: int, request: p.Alive, now: datetime) -> Outcome | None:
    rows = _fetch(_SQL_ALIVE, [_online_since(now), machine_id])
    if not rows or not rows[0][0] or rows[0][1] is None or rows[0][1] != request.version:
        return None  # a new board or new firmware: recorded at once (and shown on the dashboard)
    _board_seen[machine_id] = (request.serial, request.ip, request.heap, now)
    return Outcome(None)


_FAST = {
    p.CheckMachine: _fast_check_machine,
    p.CheckUser: _fast_check_user,
    p.InUse: _fast_in_use,
    p.Alive: _fast_alive,
}


def heartbeats_pending() -> bool:
    return bool(_seen or _use_seen or _board_seen)


def flush_heartbeats() -> None:
    """Write the stamps of the fast path: a few executemany UPDATEs, each in its own short transaction.

    Rows are updated in id order (no deadlock between two bridges' flushes) and a stamp never moves back. If the
    database is unavailable the stamps are kept for the next flush.
    """
    global _seen, _use_seen, _board_seen
    seen, use_seen, boards = _seen, _use_seen, _board_seen
    _seen, _use_seen, _board_seen = {}, {}, {}
    adapt = connection.ops.adapt_datetimefield_value
    try:
        with connection.cursor() as cursor:
            if seen:
                rows = [(adapt(at), pk, adapt(at)) for pk, at in sorted(seen.items())]
                with transaction.atomic():
                    cursor.executemany(
                        f"UPDATE {_M} SET last_seen = %s WHERE id = %s AND (last_seen IS NULL OR last_seen < %s)",
                        rows,
                    )
                seen = {}
            if use_seen:
                rows = [(adapt(at), pk, adapt(at)) for pk, at in sorted(use_seen.items())]
                with transaction.atomic():
                    cursor.executemany(
                        f"UPDATE {_U} SET last_seen = %s WHERE id = %s AND ended_at IS NULL AND last_seen < %s", rows
                    )
                use_seen = {}
            if boards:
                rows = [(s, ip, heap, adapt(at), pk) for pk, (s, ip, heap, at) in sorted(boards.items())]
                with transaction.atomic():
                    cursor.executemany(
                        f"UPDATE {_B} SET serial = %s, ip_address = %s, free_heap = %s, last_seen = %s"
                        " WHERE machine_id = %s",
                        rows,
                    )
                boards = {}
    except Exception as exc:
        logger.warning("heartbeats not written yet (%s)", exc)
        _drop_broken_connection()
        for pending, kept in ((_seen, seen), (_use_seen, use_seen), (_board_seen, boards)):
            for key, value in kept.items():
                pending.setdefault(key, value)  # type: ignore[attr-defined]


# --- Handlers ------------------------------------------------------------------------------


def _check_machine(machine_id: int, request: p.CheckMachine, now: datetime) -> Outcome:
    machine = _machine(machine_id)
    due, message = services.maintenance_status(machine)
    return Outcome(
        p.machine_reply(
            name=machine.name,
            maintenance=due,
            allowed=not machine.blocked,
            logoff=machine.type.logoff_minutes,
            type_id=machine.type_id,
            grace=machine.type.grace_minutes,
            description=message,
        )
    )


def _check_user(machine_id: int, request: p.CheckUser, now: datetime) -> Outcome:
    member = _card_member(request.uid)
    if member is None:
        if request.uid != p.NO_CARD and not Card.objects.filter(uid=request.uid).exists():
            UnknownCard.objects.create(uid=request.uid, machine_id=machine_id, seen_at=now)  # for registration
        return Outcome(p.user_reply(is_valid=False, name="Unknown", level=0))
    return Outcome(_user_reply(member, services.check_access(member, _machine(machine_id))))


def _user_reply(member: Member, decision: services.AccessDecision) -> p.Reply:
    if not decision.allowed:
        return p.user_reply(is_valid=False, name="User not authorized", level=0, missing_auth=True)
    return p.user_reply(is_valid=True, name=member.first_name, level=decision.level)


def _start_use(machine_id: int, request: p.StartUse, now: datetime) -> Outcome:
    member = _card_member(request.uid)
    if member is None:
        return Outcome(p.simple_reply(False, "Invalid card"))
    if not member.can_use_machines:
        logger.info("machine %s: startuse refused for disabled member %s", machine_id, member.pk)
        return Outcome(p.simple_reply(False, "User disabled"))
    current = _open_use(machine_id)
    if current is not None and current.member_id == member.pk:
        # The same session again: a duplicate or a replay of a start the backend answered too late (S15).
        Use.objects.filter(pk=current.pk).update(last_seen=now)
        return Outcome(p.simple_reply(True))
    if current is not None:
        # Another member's use is still open: the board rebooted without a stopuse (S18).
        services.close_use(current, ended_at=current.last_seen)
    Use.objects.create(member=member, machine_id=machine_id, started_at=now, last_seen=now, replay=request.replay)
    return Outcome(p.simple_reply(True), changed=True)


def _in_use(machine_id: int, request: p.InUse, now: datetime) -> Outcome:
    member = _card_member(request.uid)
    if member is None:
        return Outcome(p.simple_reply(False, "Invalid card"))
    current = _open_use(machine_id)
    if current is not None and current.member_id == member.pk:
        Use.objects.filter(pk=current.pk).update(last_seen=now)
        return Outcome(p.simple_reply(True, "inUse"))
    changed = False
    if current is not None:
        # The board says this member is on; the open use is someone else's orphan.
        services.close_use(current, ended_at=current.last_seen)
        changed = True
    if member.can_use_machines:
        # A missed startuse, e.g. after a backend restart (S17).
        start = now - timedelta(seconds=request.duration)
        Use.objects.create(member=member, machine_id=machine_id, started_at=start, last_seen=now)
        changed = True
    return Outcome(p.simple_reply(True, "inUse"), changed=changed)


def _stop_use(machine_id: int, request: p.StopUse, now: datetime) -> Outcome:
    member = _card_member(request.uid)
    duration = timedelta(seconds=request.duration)
    done = p.simple_reply(True, f"Duration {request.duration} seconds")
    current = _open_use(machine_id)
    if current is not None and (member is None or current.member_id != member.pk):
        # The board's user is not the one on record: the open use is an orphan.
        if request.uid == p.NO_CARD or member is None:
            # No usable card on the stop (a remote stop after boot): the board's current session is the open one.
            if request.duration == 0:
                return Outcome(done)
            _close_at(current, duration, now)
            return Outcome(done, changed=True)
        services.close_use(current, ended_at=current.last_seen)
        current = None
        changed = True
    else:
        changed = False
    if current is not None:
        _close_at(current, duration, now)
        return Outcome(done, changed=True)
    if member is None:
        return Outcome(p.simple_reply(False, "Invalid card") if request.uid != p.NO_CARD else done, changed=changed)
    if request.duration == 0 or not member.can_use_machines:
        return Outcome(done, changed=changed)  # a remote stop on an idle machine (S21): nothing to record
    latest = Use.objects.filter(machine_id=machine_id).order_by("-started_at").first()
    if (
        latest is not None
        and latest.ended_at is not None
        and latest.member_id == member.pk
        and latest.duration == request.duration
        and now - latest.ended_at <= DUPLICATE_WINDOW
    ):
        return Outcome(done, changed=changed)  # a duplicate stopuse (S16)
    # A session the backend never saw start: an offline use replayed, or a lost startuse (S14).
    use = Use.objects.create(
        member=member, machine_id=machine_id, started_at=now - duration, last_seen=now, replay=request.replay
    )
    services.close_use(use, ended_at=now)
    return Outcome(done, changed=True)


def _close_at(use: Use, duration: timedelta, now: datetime) -> None:
    end = use.started_at + duration
    if end > now + FUTURE_SLACK:
        # The start was stamped when a replayed startuse arrived, after the session: move the session back (M12).
        use.started_at = now - duration
        Use.objects.filter(pk=use.pk).update(started_at=use.started_at)
        end = now
    services.close_use(use, ended_at=end, last_seen=max(now, use.last_seen))


def _maintenance(machine_id: int, request: p.Maintenance, now: datetime) -> Outcome:
    member = _card_member(request.uid)
    if member is None:
        return Outcome(p.simple_reply(False, "Wrong user card"))
    if not services.may_record_maintenance(member):
        return Outcome(p.simple_reply(False, "Not authorized"))
    machine = Machine.objects.get(pk=machine_id)
    due = services.due_plans(machine)
    if not due:
        return Outcome(p.simple_reply(True))  # nothing due: a duplicate or replay records nothing
    services.record_interventions(machine=machine, member=member, plans=due, replay=request.replay, when=now)
    return Outcome(p.simple_reply(True), changed=True)


def _alive(machine_id: int, request: p.Alive, now: datetime) -> Outcome:
    board = Board.objects.filter(machine_id=machine_id).first()
    new_firmware = board is None or board.firmware != request.version
    fields = {
        "serial": request.serial,
        "ip_address": request.ip,
        "firmware": request.version,
        "free_heap": request.heap,
        "last_seen": now,
    }
    if board is None:
        try:
            with transaction.atomic():
                Board.objects.create(machine_id=machine_id, **fields)
        except IntegrityError:  # another bridge created it meanwhile
            Board.objects.filter(machine_id=machine_id).update(**fields)
    else:
        Board.objects.filter(pk=board.pk).update(**fields)
    return Outcome(None, changed=new_firmware)


def _sync_cache(machine_id: int, request: p.SyncCache) -> p.Reply:
    machine = Machine.objects.select_related("type").filter(pk=machine_id).first()
    if machine is None:
        return p.unknown_machine_reply()
    cards = Card.objects.filter(
        active=True, member__disabled=False, member__is_active=True, member__deleted_at__isnull=True
    )
    allowed = Q(member__role__authorize_all=True)
    if not machine.blocked:
        allowed |= Q() if not machine.type.requires_authorization else Q(member__authorizations__machine=machine)
    rows = list(
        cards.filter(allowed)
        .distinct()
        .order_by("uid")
        .values_list("uid", "member__role__authorize_all", "member__role__maintenance")[
            request.offset : request.offset + SYNC_PAGE + 1
        ]
    )
    more = len(rows) > SYNC_PAGE
    entries = [(uid, 2 if (everything or maint) else 1) for uid, everything, maint in rows[:SYNC_PAGE]]
    return p.cards_reply(entries, offset=request.offset, more=more)


_HANDLERS = {
    p.CheckMachine: _check_machine,
    p.CheckUser: _check_user,
    p.StartUse: _start_use,
    p.InUse: _in_use,
    p.StopUse: _stop_use,
    p.Maintenance: _maintenance,
    p.Alive: _alive,
}


# --- Housekeeping --------------------------------------------------------------------------


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
