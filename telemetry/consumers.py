"""The live dashboard's websocket: staff only, one group, events forwarded as they come.

Async on purpose: a sync consumer holds a thread per message, and 500 open dashboards each receiving every
event would queue on the thread pool. The tiles are computed once by the sender (``machines.live``), so a
consumer does no database work per event; it only reads the database once, for the snapshot it sends on
connect (a reconnecting page catches up with what it missed).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.utils import timezone

from fabomatic.dashboard import dashboard_tiles
from machines.live import GROUP

logger = logging.getLogger(__name__)

# Close code sent when the handshake is refused (Daphne answers the HTTP upgrade with 403).
CLOSE_FORBIDDEN = 4403


def _snapshot() -> dict[str, Any]:
    now = timezone.now()
    return {"type": "snapshot", "now": now.isoformat(), "tiles": dashboard_tiles(now)}


class _Read:
    """One snapshot read, shared by the sockets that joined the group before it began."""

    def __init__(self) -> None:
        self.began: float | None = None  # set on the database thread when the read begins
        self.task: asyncio.Task | None = None

    def run(self) -> dict[str, Any]:
        self.began = time.monotonic()
        return _snapshot()


# The latest snapshot read of each event loop.
_latest: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Read] = weakref.WeakKeyDictionary()


async def snapshot(joined_at: float) -> dict[str, Any]:
    """Every tile, read after ``joined_at`` (when the socket joined the group).

    When many dashboards connect at once (daphne restarted, 500 pages reconnecting), they share one database
    read instead of queueing one each on the database thread. A read that begins after a socket joined the
    group misses nothing for it: anything later reaches the socket as an event, after the snapshot.
    """
    loop = asyncio.get_running_loop()
    read = _latest.get(loop)
    if read is None or (read.began is not None and read.began < joined_at):
        read = _Read()
        read.task = loop.create_task(database_sync_to_async(read.run)())
        _latest[loop] = read
    return await asyncio.shield(read.task)


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active or not user.is_staff:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.channel_layer.group_add(GROUP, self.channel_name)
        self.joined = True
        joined_at = time.monotonic()
        await self.accept()
        await self.send_json(await snapshot(joined_at))

    async def disconnect(self, code: int) -> None:
        if getattr(self, "joined", False):
            await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The page sends nothing; anything received is ignored."""

    # One handler per event type sent by machines.live.
    async def machine_update(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "machine.update", "tile": event["tile"]})

    async def machine_heartbeat(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "machine.heartbeat", "id": event["id"], "last_seen": event["last_seen"]})
