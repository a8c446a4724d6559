"""Board requests → database rows → the reply the board expects.

Read-only requests from a machine that is online take the fast path (:mod:`telemetry.fastpath`): one raw query, no
write transaction, their "heard from" stamps written in batches. Every other request is one short transaction: the
machine's ``last_seen`` is touched first (one UPDATE, which also tells whether the machine exists and, on
PostgreSQL, locks its row so two bridges serialise per machine), then the action's work, then commit. Only after
the commit does the caller publish the reply and broadcast to the live dashboard. The use lifecycle (``startuse``,
``inuse``, ``stopuse``, replays, orphans) is :mod:`telemetry.sessions`; this module holds the dispatch and the other
actions (``checkmachine``, ``checkuser``, ``maintenance``, ``alive``, ``synccache``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone

from integrations import outbox
from machines import safety, services
from machines.models import Machine
from members.models import Card, UnknownCard

from . import protocol as p
from .fastpath import (
    FAST,
    card_member,
    drop_broken_connection,
    flush_heartbeats,
    heap_minima,
    machine_of,
    machine_reply,
    stamps,
    user_reply,
)
from .models import Board
from .outcome import Outcome
from .sessions import in_use, start_use, stop_use

logger = logging.getLogger(__name__)

# Cards per synccache page read from the database (a reply holds about eight).
SYNC_PAGE = 12


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
        drop_broken_connection()
        return Outcome(None if isinstance(request, p.Alive) else p.unavailable_reply(request), failed=True)
    except DatabaseError as exc:  # the data, not the database: nothing to reconnect (the transaction rolled back)
        logger.warning("machine %s %s: refused by the database (%s)", machine_id, request.action, exc)
        return Outcome(None if isinstance(request, p.Alive) else p.unavailable_reply(request), failed=True)
    except Exception:
        logger.exception("machine %s %s: failed", machine_id, request.action)
        drop_broken_connection()
        return Outcome(None if isinstance(request, p.Alive) else p.unavailable_reply(request), failed=True)


def _process(machine_id: int, request: p.Request, now: datetime) -> Outcome:
    if isinstance(request, p.SyncCache):  # the only request that does not count as "heard from" (old backend)
        return Outcome(_sync_cache(machine_id, request))
    live = _is_live(request)
    fast = FAST.get(type(request))
    if fast is not None:
        outcome = fast(machine_id, request, now)
        if outcome is not None:
            stamps.machine(machine_id, now, live=live)  # written by flush_heartbeats() within FLUSH_EVERY
            outcome.seen = now
            return outcome
    with transaction.atomic():
        came_online = _touch(machine_id, now, live=live)
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


#
# Most traffic is read-only: checkmachine and checkuser every swipe and every 30 s, inuse heartbeats of the session on
# record, alive from a known board. From a machine already online these are answered from ONE raw query each (the
# ORM's SQL compilation would cost more than the query) and write nothing at once: their "heard from" stamps are kept
# here and written by flush_heartbeats() in one short transaction every FLUSH_EVERY seconds (the worker calls it). A
# request that changes state (a use opened or closed, an intervention, an unknown card, a new board or firmware, a
# machine coming online) returns None here and takes the transactional path: committed before its reply is sent.
# Nothing is cached across requests: a block, an unblock or a new authorization is seen by the next request.

# --- Handlers ------------------------------------------------------------------------------


def _check_machine(machine_id: int, request: p.CheckMachine, now: datetime) -> Outcome:
    machine = machine_of(machine_id)
    return Outcome(machine_reply(machine, machine.type, None, lock=safety.lock_reason(machine_id)))


def _check_user(machine_id: int, request: p.CheckUser, now: datetime) -> Outcome:
    """The card's decision; a refusal (by the backend, or by the board itself on an allowed card: blocked machine,
    maintenance due) is kept with its reason; an armed sign-off trains a card refused for want of a valid
    authorization, on this swipe (docs/protocol.md §9)."""
    member = card_member(request.uid)
    if member is None:
        if request.uid != p.NO_CARD and not Card.objects.filter(uid=request.uid).exists():
            _note_unknown_card(request.uid, machine_id, now)  # for registration
        recorded = request.uid != p.NO_CARD and safety.record_refusal(
            machine_id, services.Refusal.UNKNOWN_CARD, uid=request.uid, now=now
        )
        return Outcome(p.user_reply(is_valid=False, name="Unknown", level=0), changed=recorded)
    machine = machine_of(machine_id)
    decision = services.check_access(member, machine, now=now)
    trained = False
    if decision.refusal in (services.Refusal.NOT_AUTHORIZED, services.Refusal.EXPIRED):
        if safety.sign_off(machine, member, now) is not None:  # a trainer armed this machine: trained on this swipe
            decision, trained = services.check_access(member, machine, now=now), True
    refusal = decision.refusal or services.board_refusal(decision, machine)
    recorded = refusal is not None and safety.record_refusal(
        machine_id, refusal, member_id=member.pk, uid=request.uid, now=now
    )
    return Outcome(user_reply(member, decision), changed=trained or recorded)  # the dashboard shows refusals


def _note_unknown_card(uid: str, machine_id: int, now: datetime) -> None:
    """One row per card and machine, counting the swipes: a board swiping in a loop cannot grow the table."""
    outbox.unknown_card(uid, machine_id, now)
    if UnknownCard.objects.filter(uid=uid, machine_id=machine_id).update(seen_at=now, count=F("count") + 1):
        return
    try:
        with transaction.atomic():
            UnknownCard.objects.create(uid=uid, machine_id=machine_id, seen_at=now, first_seen=now)
    except IntegrityError:  # another bridge created it meanwhile
        UnknownCard.objects.filter(uid=uid, machine_id=machine_id).update(seen_at=now, count=F("count") + 1)


def _maintenance(machine_id: int, request: p.Maintenance, now: datetime) -> Outcome:
    """The 10-second hold of a level-2 card: records the due plan items and, live, closes the machine's locks (its
    fault reports and checks after use; a replay never does: the hold happened at an unknown time). §2.6, §9.5."""
    member = card_member(request.uid)
    if member is None:
        return Outcome(p.simple_reply(False, "Wrong user card"))
    if not services.may_record_maintenance(member):
        return Outcome(p.simple_reply(False, "Not authorized"))
    machine = Machine.objects.get(pk=machine_id)
    closed = safety.close_locks_at_machine(machine, member, replay=request.replay, now=now)
    due = services.due_plans(machine)
    if due:
        services.record_interventions(machine=machine, member=member, plans=due, replay=request.replay, when=now)
    # Nothing due and nothing closed (a duplicate, a replay of one already recorded): request_ok true, nothing more.
    return Outcome(p.simple_reply(True), changed=closed or bool(due))


def _alive(machine_id: int, request: p.Alive, now: datetime) -> Outcome:
    heap_minima.note(machine_id, request.heap, now)
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
    cards = Card.objects.filter(services.may_use_filter(machine, member="member__"), active=True)
    rows = list(
        cards.distinct()
        .order_by("uid")
        .values_list("uid", "member__role__maintenance")[request.offset : request.offset + SYNC_PAGE + 1]
    )
    more = len(rows) > SYNC_PAGE
    entries = [(uid, 2 if maint else 1) for uid, maint in rows[:SYNC_PAGE]]  # level 2: maintenance roles only
    return p.cards_reply(entries, offset=request.offset, more=more)


# Keyed by request class: each handler takes the request of its key's class (hence Any in the value type).
_HANDLERS: dict[type[p.Request], Callable[[int, Any, datetime], Outcome]] = {
    p.CheckMachine: _check_machine,
    p.CheckUser: _check_user,
    p.StartUse: start_use,
    p.InUse: in_use,
    p.StopUse: stop_use,
    p.Maintenance: _maintenance,
    p.Alive: _alive,
}
