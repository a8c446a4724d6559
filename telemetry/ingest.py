"""Board requests → database rows → the reply the board expects.

Read-only requests from a machine that is online (checkmachine, checkuser of a known card, inuse of the session on
record, alive of a known board) take the fast path: one raw query, no write transaction; their "heard from" stamps are
written in batches (:func:`flush_heartbeats`, every ``FLUSH_EVERY`` s from the bridge's worker).

Every other request is one short transaction: the machine's ``last_seen`` is touched first (one UPDATE, which also
tells whether the machine exists and, on PostgreSQL, locks its row so two bridges serialise per machine), then the
action's work, then commit. Only after the commit does the caller publish the reply and broadcast to the live
dashboard.

Use lifecycle (docs/protocol.md §7; idempotent under the board's replays and duplicates, see the README's bridge
section for the sequences):

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
- Policy for disabled, deleted or inactive members (S7): their ``startuse`` is refused (``request_ok`` false) and no
  use is opened or created for them by ``inuse``/``stopuse``; a use that is already open is still closed normally.
  Members who are merely not authorized (an offline whitelist or cache login) are recorded: the machine ran.
- An open use silent for more than ``ORPHAN_SECONDS`` is closed at its last heartbeat + 1 s (S19) by
  :func:`close_orphans`, which the bridge runs periodically.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from machines import services
from machines.models import Authorization, Machine, MachineType, MaintenancePlan, Use
from members.models import Card, Member, Role, UnknownCard

from . import protocol as p
from .models import Board

logger = logging.getLogger(__name__)

# A stopuse that repeats the machine's latest closed use (same member, same duration) within this window is a
# duplicate (S16). A board's replay buffer survives reboots, so allow for a long outage.
DUPLICATE_WINDOW = timedelta(days=2)
# Cards per synccache page read from the database (a reply holds about eight).
SYNC_PAGE = 12


class Unavailable(Exception):
    """The database could not be reached or locked in time."""


COPY_SLACK = timedelta(seconds=10)


@dataclass
class Outcome:
    reply: p.Reply | None
    changed: bool = False  # the machine's dashboard tile changed: broadcast it after the reply
    seen: datetime | None = None  # the machine was heard from at this time
    failed: bool = False  # the database was unavailable: the reply says request_ok false
    note: str = ""  # "copy" (a replayed duplicate recognised) or "flagged" (an implausible duration recorded)


def handle_message(machine_id: int, request: p.Request) -> p.Reply | None:
    """Process one request and return the reply to publish (None: send nothing). Never raises.

    The synchronous single-request API (the fuzz test; the bridge's workers call :func:`process` and batch the
    heartbeats themselves): the fast path's stamps are written at once.
    """
    outcome = process(machine_id, request)
    flush_heartbeats()
    return outcome.reply


def process(machine_id: int, request: p.Request, *, now: datetime | None = None) -> Outcome:
    """The database work of one request, committed before it returns. Never raises."""
    try:
        return _process(machine_id, request, now or timezone.now())
    except (OperationalError, InterfaceError) as exc:
        logger.warning("machine %s %s: database unavailable (%s)", machine_id, request.action, exc)
        _drop_broken_connection()
        return Outcome(None if isinstance(request, p.Alive) else p.unavailable_reply(request), failed=True)
    except DatabaseError as exc:  # the data, not the database: nothing to reconnect (the transaction rolled back)
        logger.warning("machine %s %s: refused by the database (%s)", machine_id, request.action, exc)
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


def _process(machine_id: int, request: p.Request, now: datetime) -> Outcome:
    if isinstance(request, p.SyncCache):  # the only request that does not count as "heard from" (old backend)
        return Outcome(_sync_cache(machine_id, request))
    live = _is_live(request)
    fast = _FAST.get(type(request))
    if fast is not None:
        outcome = fast(machine_id, request, now)
        if outcome is not None:
            stamps.machine(machine_id, now, live=live)  # written by flush_heartbeats() within FLUSH_EVERY
            outcome.seen = now
            return outcome
    with transaction.atomic():
        # A stopuse needs the previous live stamp (to judge a replay): it writes its own at the end.
        came_online = _touch(machine_id, now, live=live and not isinstance(request, p.StopUse))
        if came_online is None:
            # Unknown machine: nothing recorded; no reply to alive, which the board does not expect (M6).
            return Outcome(None if isinstance(request, p.Alive) else p.unknown_machine_reply())
        outcome = _HANDLERS[type(request)](machine_id, request, now)
    outcome.seen = now
    outcome.changed = outcome.changed or came_online
    return outcome


def _is_live(request: p.Request) -> bool:
    """A request the board sent as it happened: not a replay from its buffer, not the announcement."""
    return not (isinstance(request, p.Alive) or getattr(request, "replay", False))


def _touch(machine_id: int, now: datetime, *, live: bool = False) -> bool | None:
    """Mark the machine heard from now (and heard live). None for an unknown machine, True if it was offline."""
    # Raw SQL: this runs for every message, and the ORM's query compilation would cost more than the UPDATE.
    ops = connection.ops
    table = Machine._meta.db_table
    stamp = ops.adapt_datetimefield_value(now)
    since = ops.adapt_datetimefield_value(now - timedelta(seconds=settings.ONLINE_SECONDS))
    assign = "last_seen = %s, heard_live_at = %s" if live else "last_seen = %s"
    values = [stamp, stamp] if live else [stamp]
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {assign} WHERE id = %s AND last_seen >= %s", [*values, machine_id, since])
        if cursor.rowcount:
            return False
        cursor.execute(f"UPDATE {table} SET {assign} WHERE id = %s", [*values, machine_id])
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


class Stamps:
    """The fast path's "heard from" stamps, kept until the next flush. Thread-safe: the bridge has several workers.

    Per machine: heard at, heard live at (a request that is not an alive or a replay); per open use: its last inuse;
    per board: serial, ip, heap and when.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: dict[int, datetime] = {}
        self.live: dict[int, datetime] = {}
        self.uses: dict[int, datetime] = {}
        self.boards: dict[int, tuple[str, str | None, int | None, datetime]] = {}

    def machine(self, machine_id: int, at: datetime, *, live: bool) -> None:
        with self._lock:
            self.seen[machine_id] = at
            if live:
                self.live[machine_id] = at

    def use(self, use_id: int, at: datetime) -> None:
        with self._lock:
            self.uses[use_id] = at

    def board(self, machine_id: int, serial: str, ip: str | None, heap: int | None, at: datetime) -> None:
        with self._lock:
            self.boards[machine_id] = (serial, ip, heap, at)

    def live_at(self, machine_id: int) -> datetime | None:
        with self._lock:
            return self.live.get(machine_id)

    def pending(self) -> bool:
        return bool(self.seen or self.uses or self.boards)

    def take(self) -> tuple[dict, dict, dict, dict]:
        with self._lock:
            taken = self.seen, self.live, self.uses, self.boards
            self.seen, self.live, self.uses, self.boards = {}, {}, {}, {}
        return taken

    def give_back(self, seen: dict, live: dict, uses: dict, boards: dict) -> None:
        """Stamps a failed flush could not write: kept unless a newer one arrived meanwhile."""
        with self._lock:
            for mine, kept in ((self.seen, seen), (self.live, live), (self.uses, uses), (self.boards, boards)):
                for key, value in kept.items():
                    mine.setdefault(key, value)


stamps = Stamps()

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
    stamps.use(use_id, now)
    return Outcome(p.simple_reply(True, "inUse"))


def _fast_alive(machine_id: int, request: p.Alive, now: datetime) -> Outcome | None:
    rows = _fetch(_SQL_ALIVE, [_online_since(now), machine_id])
    if not rows or not rows[0][0] or rows[0][1] is None or rows[0][1] != request.version:
        return None  # a new board or new firmware: recorded at once (and shown on the dashboard)
    stamps.board(machine_id, request.serial, request.ip, request.heap, now)
    return Outcome(None)


_FAST = {
    p.CheckMachine: _fast_check_machine,
    p.CheckUser: _fast_check_user,
    p.InUse: _fast_in_use,
    p.Alive: _fast_alive,
}


def heartbeats_pending() -> bool:
    return stamps.pending()


def flush_heartbeats() -> None:
    """Write the stamps of the fast path: one executemany UPDATE per kind, rows in id order, a stamp never moving
    back. Stamps that could not be written are kept for the next flush.

    On PostgreSQL each row is its own autocommitted statement: a row locked by one machine's request delays that
    row's stamp only, and the flush never holds one machine's row while it waits for another's (it would make
    other machines' writes time out). On SQLite one transaction: the database has a single writer anyway.
    """
    seen, live, uses, boards = stamps.take()
    if not (seen or live or uses or boards):
        return
    adapt = connection.ops.adapt_datetimefield_value

    def stamp(pk: int, at: datetime) -> tuple:  # the row of the three timestamp UPDATEs
        return (adapt(at), pk, adapt(at))

    left = (
        _write_stamps(
            f"UPDATE {_M} SET last_seen = %s WHERE id = %s AND (last_seen IS NULL OR last_seen < %s)", seen, stamp
        ),
        _write_stamps(
            f"UPDATE {_M} SET heard_live_at = %s WHERE id = %s AND (heard_live_at IS NULL OR heard_live_at < %s)",
            live,
            stamp,
        ),
        _write_stamps(
            f"UPDATE {_U} SET last_seen = %s WHERE id = %s AND ended_at IS NULL AND last_seen < %s", uses, stamp
        ),
        _write_stamps(
            f"UPDATE {_B} SET serial = %s, ip_address = %s, free_heap = %s, last_seen = %s WHERE machine_id = %s",
            boards,
            lambda pk, board: (board[0], board[1], board[2], adapt(board[3]), pk),
        ),
    )
    if any(left):
        stamps.give_back(*left)


def _write_stamps(sql: str, items: dict, row: Callable[[Any, Any], tuple]) -> dict:
    """Write ``items`` with ``sql``; returns those not written."""
    if not items:
        return {}
    ordered = sorted(items.items())
    try:
        if connection.vendor == "postgresql" and connection.get_autocommit():
            with connection.cursor() as cursor:
                cursor.executemany(sql, [row(key, value) for key, value in ordered])
        else:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.executemany(sql, [row(key, value) for key, value in ordered])
        return {}
    except (OperationalError, InterfaceError) as exc:
        if connection.vendor != "postgresql" or not connection.is_usable():
            logger.warning("heartbeats not written yet (%s)", exc)
            _drop_broken_connection()
            return items
    except DatabaseError as exc:
        logger.warning("heartbeats refused by the database (%s)", exc)
        return {}
    # PostgreSQL: one row was locked (or timed out) and the batch stopped there: row by row, keep what failed.
    left = {}
    for key, value in ordered:
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, row(key, value))
        except DatabaseError:
            left[key] = value
    if left:
        logger.info("%d heartbeat stamp(s) on locked rows kept for the next flush", len(left))
    return left


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
            _note_unknown_card(request.uid, machine_id, now)  # for registration
        return Outcome(p.user_reply(is_valid=False, name="Unknown", level=0))
    return Outcome(_user_reply(member, services.check_access(member, _machine(machine_id))))


def _note_unknown_card(uid: str, machine_id: int, now: datetime) -> None:
    """One row per card and machine, counting the swipes: a board swiping in a loop cannot grow the table."""
    if UnknownCard.objects.filter(uid=uid, machine_id=machine_id).update(seen_at=now, count=F("count") + 1):
        return
    try:
        with transaction.atomic():
            UnknownCard.objects.create(uid=uid, machine_id=machine_id, seen_at=now, first_seen=now)
    except IntegrityError:  # another bridge created it meanwhile
        UnknownCard.objects.filter(uid=uid, machine_id=machine_id).update(seen_at=now, count=F("count") + 1)


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
    if request.replay:
        # No time, and possibly a copy of a start we recorded: what follows it records the session (module doc).
        logger.info("machine %s: replayed startuse of member %s opens nothing", machine_id, member.pk)
        return Outcome(p.simple_reply(True))
    if current is not None:
        # Another member's use is still open: the board rebooted without a stopuse (S18).
        services.close_use(current, ended_at=current.last_seen)
    Use.objects.create(member=member, machine_id=machine_id, started_at=now, last_seen=now)
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
    if not member.can_use_machines:
        return Outcome(p.simple_reply(True, "inUse"), changed=changed)
    # A missed startuse, e.g. after a backend restart (S17): the session began `duration` ago, if it can have.
    machine = _machine(machine_id)
    verdict = services.judge_duration(request.duration, machine.type, since=_previous_end(machine_id, current), now=now)
    if verdict is None:
        start = now - timedelta(seconds=request.duration)
        Use.objects.create(member=member, machine_id=machine_id, started_at=start, last_seen=now)
        return Outcome(p.simple_reply(True, "inUse"), changed=True)
    # Someone is on the machine, but not since when the board says: opened now, flagged for staff.
    use = Use.objects.create(
        member=member,
        machine_id=machine_id,
        started_at=now,
        last_seen=now,
        flag=verdict.flag,
        reported_duration=request.duration,
        plausible_max=verdict.plausible_max,
    )
    logger.warning(
        "machine %s: inuse of %s s is implausible (%s): use %s opened flagged",
        machine_id,
        request.duration,
        verdict.flag,
        use.pk,
    )
    return Outcome(p.simple_reply(True, "inUse"), changed=True, note="flagged")


def _previous_end(machine_id: int, closed: Use | None = None) -> datetime | None:
    """When the machine's latest closed use ended: a new session cannot have started before (one at a time)."""
    if closed is not None and closed.ended_at is not None:
        return closed.ended_at
    latest = Use.objects.filter(machine_id=machine_id, ended_at__isnull=False).order_by("-started_at", "-id").first()
    return latest.ended_at if latest is not None else None


def _stop_use(machine_id: int, request: p.StopUse, now: datetime) -> Outcome:
    outcome = _stop_use_recorded(machine_id, request, now)
    if not request.replay:  # stamped after judging: a replay is judged against the live request before it
        Machine.objects.filter(pk=machine_id).update(heard_live_at=now)
    return outcome


def _stop_use_recorded(machine_id: int, request: p.StopUse, now: datetime) -> Outcome:
    member = _card_member(request.uid)
    done = p.simple_reply(True, f"Duration {request.duration} seconds")
    current = _open_use(machine_id)
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
    machine = _machine(machine_id)
    verdict = services.judge_duration(request.duration, machine.type, since=use.started_at, now=now)
    if use.flag or verdict is not None:
        if verdict is None:  # opened flagged (its start was implausible): it stays for staff to decide
            verdict = services.Implausible(Use.Flag(use.flag), int((now - use.started_at).total_seconds()))
        services.close_flagged(use, ended_at=now, verdict=verdict, reported=request.duration)
        return Outcome(done, changed=True, note="flagged")
    end = use.started_at + timedelta(seconds=request.duration)
    if end > now:  # the board's clock ran a little ahead of ours (within the slack): the session ends now
        use.started_at, end = now - timedelta(seconds=request.duration), now
        Use.objects.filter(pk=use.pk).update(started_at=use.started_at)
    services.close_use(use, ended_at=end, last_seen=max(now, use.last_seen))
    return Outcome(done, changed=True)


def _record_session(machine_id: int, member: Member, request: p.StopUse, now: datetime) -> Outcome:
    """A session the backend never saw open (S14): ``duration`` seconds that ended by now, unless it is a copy."""
    machine = _machine(machine_id)
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
    else:
        earlier = _previous_end(machine_id)
    since = max((t for t in (floor, earlier) if t is not None), default=None)
    verdict = services.judge_duration(request.duration, machine.type, since=None, now=now)
    if verdict is None and since is not None:
        window = services.judge_duration(request.duration + placed, machine.type, since=since, now=now)
        if window is not None:
            verdict = services.Implausible(window.flag, max(0, window.plausible_max - placed))
    if verdict is not None:
        use = Use.objects.create(
            member=member,
            machine_id=machine_id,
            started_at=now,
            ended_at=now,
            last_seen=now,
            duration=0,
            replay=request.replay,
            flag=verdict.flag,
            reported_duration=request.duration,
            plausible_max=verdict.plausible_max,
        )
        logger.warning(
            "machine %s: stopuse of %s s is implausible (%s, at most %s s): use %s flagged",
            machine_id,
            request.duration,
            verdict.flag,
            verdict.plausible_max,
            use.pk,
        )
        return Outcome(None, changed=True, note="flagged")
    start = now - timedelta(seconds=request.duration)
    use = Use.objects.create(
        member=member, machine_id=machine_id, started_at=start, last_seen=now, replay=request.replay
    )
    services.close_use(use, ended_at=now)
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
