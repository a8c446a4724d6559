"""The live dashboard's websocket: staff only, one group, events forwarded as they come.

Async on purpose: a sync consumer holds a thread per message, and 500 open dashboards each receiving every
event would queue on the thread pool. The tiles are computed once by the sender (``machines.live``), so a
consumer does no database work per event; it only reads the database once, for the snapshot it sends on
connect (a reconnecting page catches up with what it missed).
"""

from __future__ import annotations

import logging
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


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active or not user.is_staff:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.channel_layer.group_add(GROUP, self.channel_name)
        self.joined = True
        await self.accept()
        await self.send_json(await database_sync_to_async(_snapshot)())

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
