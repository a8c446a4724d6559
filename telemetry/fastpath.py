"""Raw reads for the bridge's request paths, the fast path, and the fast path's heartbeat stamps.

Most traffic is read-only: ``checkmachine`` and ``checkuser`` every swipe and every 30 s, ``inuse`` heartbeats of the
session on record, ``alive`` from a known board. From a machine already online these are answered from ONE raw query
each (the ORM's SQL compilation would cost more than the query) and write nothing at once: their "heard from" stamps
are kept in :data:`stamps` and written by :func:`flush_heartbeats` every ``FLUSH_EVERY`` seconds (the bridge's stamps
thread calls it). A request that changes state (a use opened or closed, an intervention, an unknown card, a new
board or firmware, a machine coming online) returns None here and takes the transactional path
(:mod:`telemetry.ingest`): committed before its reply is sent. Nothing is cached across requests: a block, an unblock
or a new authorization is seen by the next request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from machines import safety, services
from machines.models import Authorization, FaultReport, Machine, MachineCheck, MachineType, MaintenancePlan, Use
from members.models import Card, Member, Role

from . import protocol as p
from .models import Board, HeapSample
from .outcome import Outcome

logger = logging.getLogger(__name__)

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


HEAP_HOURS = 48


class HeapMinima:
    """Each board's lowest free heap of the current hour, kept in memory: when a board's first ``alive`` of a new
    hour arrives, the finished hour's minimum is queued and the next flush writes it, so the bridge writes at most
    one row an hour per board and the fast path stays one query. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current: dict[int, tuple[datetime, int]] = {}
        self.finished: list[tuple[int, datetime, int]] = []

    def note(self, machine_id: int, heap: int | None, at: datetime) -> None:
        if heap is None:
            return
        hour = at.replace(minute=0, second=0, microsecond=0)
        with self._lock:
            kept = self.current.get(machine_id)
            if kept is not None and kept[0] != hour:
                self.finished.append((machine_id, *kept))
                kept = None
            self.current[machine_id] = (hour, heap if kept is None else min(kept[1], heap))

    def take(self) -> list[tuple[int, datetime, int]]:
        with self._lock:
            taken, self.finished = self.finished, []
        return taken


heap_minima = HeapMinima()


_M, _T, _P = Machine._meta.db_table, MachineType._meta.db_table, MaintenancePlan._meta.db_table


_U, _C, _MEM, _R = Use._meta.db_table, Card._meta.db_table, Member._meta.db_table, Role._meta.db_table


_A, _B, _H = Authorization._meta.db_table, Board._meta.db_table, HeapSample._meta.db_table
_F, _K = FaultReport._meta.db_table, MachineCheck._meta.db_table


# The two locks of machines/safety.py (``lock_reason``): an open out-of-order fault report, an open check after use.
_LOCKS = f"""
           EXISTS(SELECT 1 FROM {_F} f WHERE f.machine_id = m.id AND f.closed_at IS NULL AND f.severity = %s),
           EXISTS(SELECT 1 FROM {_K} k WHERE k.machine_id = m.id AND k.checked_at IS NULL)"""


_SQL_MACHINE = f"""
    SELECT m.last_seen >= %s, m.name, m.blocked, m.hours, m.type_id, t.logoff_minutes, t.grace_minutes, {_LOCKS},
           p.hours_between, p.done_at_hours, p.lcd_message, p.description
    FROM {_M} m JOIN {_T} t ON t.id = m.type_id LEFT JOIN {_P} p ON p.machine_id = m.id
    WHERE m.id = %s ORDER BY p.id"""


_SQL_USER = f"""
    SELECT m.last_seen >= %s, m.blocked, t.requires_authorization,
           mem.id, mem.first_name, mem.disabled, mem.is_active, mem.deleted_at IS NOT NULL,
           r.authorize_all, r.maintenance,
           a.id, a.expires_at, {_LOCKS},
           EXISTS(SELECT 1 FROM {_P} p WHERE p.machine_id = m.id AND p.hours_between < m.hours - p.done_at_hours)
    FROM {_M} m JOIN {_T} t ON t.id = m.type_id
    LEFT JOIN {_C} c ON c.uid = %s AND c.active
    LEFT JOIN {_MEM} mem ON mem.id = c.member_id
    LEFT JOIN {_R} r ON r.id = mem.role_id
    LEFT JOIN {_A} a ON a.member_id = mem.id AND a.machine_id = m.id
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


_SQL_MACHINE_ROW = f"""
    SELECT m.name, m.blocked, m.hours, m.last_seen, m.heard_live_at, m.type_id,
           t.name, t.logoff_minutes, t.grace_minutes, t.requires_authorization, t.check_after_use
    FROM {_M} m JOIN {_T} t ON t.id = m.type_id WHERE m.id = %s"""
_SQL_ALIVE = f"""
    SELECT m.last_seen >= %s, b.firmware FROM {_M} m LEFT JOIN {_B} b ON b.machine_id = m.id WHERE m.id = %s"""


def _fetch(sql: str, params: list) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _online_since(now: datetime) -> object:
    return connection.ops.adapt_datetimefield_value(now - timedelta(seconds=settings.ONLINE_SECONDS))


def _fast_check_machine(machine_id: int, request: p.CheckMachine, now: datetime) -> Outcome | None:
    rows = _fetch(_SQL_MACHINE, [_online_since(now), FaultReport.Severity.OUT_OF_ORDER, machine_id])
    if not rows or not rows[0][0]:
        return None  # unknown, or coming online: the transactional path
    _online, name, blocked, hours, type_id, logoff, grace, fault, check = rows[0][:9]
    plans = [
        MaintenancePlan(hours_between=every, done_at_hours=done, lcd_message=lcd or "", description=text or "")
        for *_, every, done, lcd, text in rows
        if every is not None
    ]
    return Outcome(
        machine_reply(
            Machine(id=machine_id, name=name, blocked=bool(blocked), hours=hours, type_id=type_id),
            MachineType(id=type_id, logoff_minutes=logoff, grace_minutes=grace),
            plans,
            lock=_lock(fault, check),
        )
    )


def _lock(fault: object, check: object) -> str | None:
    """``safety.lock_reason`` from the query's two EXISTS columns (a fault comes first)."""
    return services.Refusal.FAULT if fault else services.Refusal.TO_CHECK if check else None


def machine_reply(
    machine: Machine, kind: MachineType, plans: list[MaintenancePlan] | None, *, lock: str | None
) -> p.Reply:
    """The ``checkmachine`` reply (docs/protocol.md §2.1, §9.2): a lock (fault, check after use) shows as
    maintenance with its own message, which takes precedence over a due plan's, so the board itself keeps level 1
    out and asks level 2 for the 10-second hold; ``allowed`` stays "not blocked"."""
    due, message = services.maintenance_status(machine, plans)
    if lock:
        due, message = True, safety.lock_message(lock)
    return p.machine_reply(
        name=machine.name,
        maintenance=due,
        allowed=not machine.blocked,
        logoff=kind.logoff_minutes,
        type_id=machine.type_id,
        grace=kind.grace_minutes,
        description=message,
    )


def _fast_check_user(machine_id: int, request: p.CheckUser, now: datetime) -> Outcome | None:
    """An allowed card, answered from one query. A refusal is kept with its reason and may be a trainee's sign-off:
    the transactional path."""
    rows = _fetch(_SQL_USER, [_online_since(now), FaultReport.Severity.OUT_OF_ORDER, request.uid, machine_id])
    if not rows or not rows[0][0] or rows[0][3] is None:
        return None  # unknown machine or card (recorded for registration), or coming online
    (_online, blocked, needs_auth, member_id, first_name, disabled, active, deleted, everything, maint, auth_id,
     expires, fault, check, due) = rows[0]  # fmt: skip
    member = Member(
        id=member_id,
        first_name=first_name,
        disabled=bool(disabled),
        is_active=bool(active),
        deleted_at=now if deleted else None,  # only its presence matters to check_access
        role=Role(authorize_all=bool(everything), maintenance=bool(maint)),
    )
    machine = Machine(id=machine_id, blocked=bool(blocked), type=MachineType(requires_authorization=bool(needs_auth)))
    authorization = Authorization(expires_at=_dt(expires) if expires else None) if auth_id else None
    decision = services.check_access(member, machine, authorization=authorization, lock=_lock(fault, check), now=now)
    if not decision.allowed or services.board_refusal(decision, machine, due=bool(due)):
        return None  # refused here or by the board itself: recorded with its reason
    return Outcome(user_reply(member, decision))


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
    heap_minima.note(machine_id, request.heap, now)
    return Outcome(None)


# Keyed by request class: each function takes the request of its key's class (hence Any in the value type).
FAST: dict[type[p.Request], Callable[[int, Any, datetime], Outcome | None]] = {
    p.CheckMachine: _fast_check_machine,
    p.CheckUser: _fast_check_user,
    p.InUse: _fast_in_use,
    p.Alive: _fast_alive,
}


def heartbeats_pending() -> bool:
    return stamps.pending() or bool(heap_minima.finished)


def flush_heartbeats() -> None:
    """Write the stamps of the fast path: one executemany UPDATE per kind, rows in id order, a stamp never moving
    back. Stamps that could not be written are kept for the next flush.

    On PostgreSQL each row is its own autocommitted statement: a row locked by one machine's request delays that
    row's stamp only, and the flush never holds one machine's row while it waits for another's (it would make
    other machines' writes time out). On SQLite one transaction: the database has a single writer anyway.
    """
    write_heap_minima()
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


def write_heap_minima() -> None:
    """The finished hours' heap minima, and the samples of those boards older than ``HEAP_HOURS`` removed."""
    finished = heap_minima.take()
    if not finished:
        return
    adapt = connection.ops.adapt_datetimefield_value
    oldest = adapt(timezone.now() - timedelta(hours=HEAP_HOURS))
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            for machine_id, hour, minimum in finished:
                cursor.execute(
                    f"DELETE FROM {_H} WHERE machine_id = %s AND (hour = %s OR hour < %s)",
                    [machine_id, adapt(hour), oldest],
                )
                cursor.execute(
                    f"INSERT INTO {_H} (machine_id, hour, minimum) SELECT id, %s, %s FROM {_M} WHERE id = %s",
                    [adapt(hour), minimum, machine_id],
                )
    except DatabaseError as exc:  # a lost hour of history is not worth a retry loop in the bridge
        logger.warning("free-heap history not written (%s)", exc)


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
            drop_broken_connection()
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


def card_member(uid: str) -> Member | None:
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


def open_use(machine_id: int) -> Use | None:
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


def drop_broken_connection() -> None:
    # A failed connection is reopened on the next request, so the bridge recovers by itself.
    try:
        connection.close()
    except Exception:  # closing a dead connection may fail as well
        logger.debug("closing the database connection failed", exc_info=True)


def user_reply(member: Member, decision: services.AccessDecision) -> p.Reply:
    if not decision.allowed:
        return p.user_reply(is_valid=False, name="User not authorized", level=0, missing_auth=True)
    return p.user_reply(is_valid=True, name=member.first_name, level=decision.level)


def machine_of(machine_id: int) -> Machine:
    """The machine with its type, the fields the request handlers read, in one raw query (the ORM's compilation
    cost more than the query on every state change)."""
    rows = _fetch(_SQL_MACHINE_ROW, [machine_id])
    if not rows:
        raise Machine.DoesNotExist(f"machine {machine_id}")
    name, blocked, hours, last_seen, heard_live_at, type_id, type_name, logoff, grace, needs_auth, check = rows[0]
    kind = MachineType(
        id=type_id,
        name=type_name,
        logoff_minutes=logoff,
        grace_minutes=grace,
        requires_authorization=bool(needs_auth),
        check_after_use=bool(check),
    )
    return Machine(
        id=machine_id,
        name=name,
        blocked=bool(blocked),
        hours=hours,
        last_seen=_dt(last_seen) if last_seen is not None else None,
        heard_live_at=_dt(heard_live_at) if heard_live_at is not None else None,
        type=kind,
    )
