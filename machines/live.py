"""Live machine status for the dashboard: one tile per machine, pushed over the Channels layer.

The sender (the bridge, or the portal after an edit) computes a tile once and the layer fans it out;
consumers only forward, so 500 open dashboards cost nothing per event.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Literal, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import services
from .models import Machine, Use

logger = logging.getLogger(__name__)

GROUP = "dashboard"
State = Literal["in_use", "blocked", "maintenance", "offline", "free"]
STATES: tuple[State, ...] = ("in_use", "blocked", "maintenance", "offline", "free")


class Tile(TypedDict):
    id: int
    name: str
    state: State
    user: str | None  # first name of the member using it
    since: str | None  # ISO start of the open use
    maintenance: str  # the first due item
    last_seen: str | None
    firmware: str | None
    ip: str | None  # the board's address, as the old dashboard showed it
    online_seconds: int


def tile_state(*, in_use: bool, blocked: bool, maintenance: bool, online: bool) -> State:
    """One state per machine, in the old dashboard's precedence: in use, blocked, maintenance, offline, free."""
    if in_use:
        return "in_use"
    if blocked:
        return "blocked"
    if maintenance:
        return "maintenance"
    if not online:
        return "offline"
    return "free"


def build_tile(machine: Machine, open_use: Use | None, now: datetime | None = None) -> Tile:
    """The tile of a machine whose ``plans`` and ``board`` are prefetched or cheap to fetch."""
    due, message = services.maintenance_status(machine)
    board = getattr(machine, "board", None)  # reverse one-to-one: None when no board announced itself
    return Tile(
        id=machine.pk,
        name=machine.name,
        state=tile_state(
            in_use=open_use is not None, blocked=machine.blocked, maintenance=due, online=machine.is_online(now)
        ),
        user=open_use.member.first_name if open_use else None,
        since=open_use.started_at.isoformat() if open_use else None,
        maintenance=message,
        last_seen=machine.last_seen.isoformat() if machine.last_seen else None,
        firmware=(board.firmware or None) if board else None,
        ip=board.ip_address if board else None,
        online_seconds=settings.ONLINE_SECONDS,
    )


def machine_tile(machine_id: int) -> Tile | None:
    """One machine's tile in three indexed queries (machine + board, its plans, its open use)."""
    machine = Machine.objects.select_related("board").prefetch_related("plans").filter(pk=machine_id).first()
    if machine is None:
        return None
    # Served by the partial unique index one_open_use_per_machine: never scans the history.
    open_use = Use.objects.select_related("member").filter(machine_id=machine_id, ended_at__isnull=True).first()
    return build_tile(machine, open_use, timezone.now())


def _send(message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(GROUP, message)
    except Exception:  # the dashboard is a convenience: never fail the caller because Redis is away
        logger.warning("live update not sent (channel layer unavailable)", exc_info=True)


def broadcast_machine(machine_id: int) -> None:
    """Push the full tile of one machine (call after commit)."""
    tile = machine_tile(machine_id)
    if tile is not None:
        _send({"type": "machine.update", "tile": tile})


def broadcast_machine_on_commit(machine_id: int) -> None:
    """For the portal: push the tile once the edit in hand (block, end a use, record maintenance) commits."""
    transaction.on_commit(lambda: broadcast_machine(machine_id))


def broadcast_heartbeat(machine_id: int, last_seen: datetime) -> None:
    """Push only "heard from now" (no database work): keeps a tile ONLINE on screen."""
    _send({"type": "machine.heartbeat", "id": machine_id, "last_seen": last_seen.isoformat()})
