"""What reaches open dashboards, and the one way it is sent.

Two events, both fanned out by the channel layer to the group every dashboard socket joins; the sender computes
a tile once, consumers only forward, so 500 open dashboards cost nothing per event:

- :class:`TileUpdate` — a machine's whole tile changed (a use opened or closed, a block, maintenance, a board
  coming online): sent by the bridge after its reply, and by portal edits once they commit;
- :class:`Heartbeat` — a machine was heard from (no database work): keeps its tile ONLINE on screen. The bridge
  sends at most one per machine per :data:`HEARTBEAT_EVERY` seconds (:class:`HeartbeatThrottle`).

A channel layer that is down (Redis away) is logged and never fails the caller: the dashboard is a convenience.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Literal, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from .tiles import Tile, tiles

logger = logging.getLogger(__name__)

GROUP = "dashboard"
HEARTBEAT_EVERY = 10.0


class TileUpdate(TypedDict):
    type: Literal["machine.update"]
    tile: Tile


class Heartbeat(TypedDict):
    type: Literal["machine.heartbeat"]
    id: int
    last_seen: str


Event = TileUpdate | Heartbeat


def tile_update(tile: Tile) -> TileUpdate:
    return {"type": "machine.update", "tile": tile}


def heartbeat(machine_id: int, last_seen: datetime) -> Heartbeat:
    return {"type": "machine.heartbeat", "id": machine_id, "last_seen": last_seen.isoformat()}


def send(events: list[Event]) -> None:
    """The one sender: every event to the dashboards' group, in one call into the channel layer."""
    if not events:
        return
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(_send_all)(layer, events)
    except Exception:
        machines = sorted(
            {event["tile"]["id"] if event["type"] == "machine.update" else event["id"] for event in events}
        )
        logger.warning("live update for machines %s failed (channel layer unavailable)", machines[:20], exc_info=True)


async def _send_all(layer: object, events: list[Event]) -> None:
    for event in events:
        await layer.group_send(GROUP, event)  # type: ignore[attr-defined]


def push_machines(machine_ids: Iterable[int], *, heard: Iterable[Heartbeat] = ()) -> list[Tile]:
    """Send the tiles of these machines (three queries for any number), after these heartbeats; returns the tiles
    sent (the bridge hands them to Home Assistant too)."""
    ids = set(machine_ids)
    events: list[Event] = list(heard)
    built: list[Tile] = []
    try:
        built = tiles(ids) if ids else []
    except Exception:  # the database is away: the next change sends the tile again
        logger.warning("live update for machines %s not built", sorted(ids)[:20], exc_info=True)
    send(events + [tile_update(tile) for tile in built])
    return built


def push_on_commit(machine_ids: Iterable[int]) -> None:
    """For the portal: push the tiles once the edit in hand (block, end a use, record maintenance) commits."""
    ids = set(machine_ids)
    transaction.on_commit(lambda: push_machines(ids))


class HeartbeatThrottle:
    """At most one heartbeat per machine per ``every`` seconds; a tile update counts as one."""

    def __init__(self, every: float = HEARTBEAT_EVERY) -> None:
        self.every = every
        self._last: dict[int, float] = {}

    def due(self, machine_id: int) -> bool:
        now = time.monotonic()
        if now - self._last.get(machine_id, -self.every) >= self.every:
            self._last[machine_id] = now
            return True
        return False

    def sent_tile(self, machine_id: int) -> None:
        self._last[machine_id] = time.monotonic()
