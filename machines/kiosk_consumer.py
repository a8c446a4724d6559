"""The kiosk's websocket, ``/ws/kiosk/<secret>/``: the dashboard's live events, cut to what a room may see.

It joins the dashboard's group (:data:`machines.dashboard.events.GROUP`), so the bridge and the portal reach open
screens with the same one sender and nothing new to send; each tile it receives is cut down by
:func:`machines.kiosk.kiosk_tile` (no board address, no firmware, a first name at most) with the machine's locks
read afresh. Only the event types listed in :data:`FORWARDED` reach the screen: anything else the dashboard's group
may carry one day is dropped, never forwarded.

The secret is checked on connect, when staff revoke the screen or replace its address (``kiosk.recheck`` to the
screen's own group), and every :data:`~machines.kiosk.RECHECK_SECONDS` on its own (a lost message, another
process): a revoked screen stops receiving within a minute. Every check also sends a fresh snapshot, so a lock that
no event announced shows within the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import kiosk
from .dashboard.events import GROUP
from .models import KioskScreen

logger = logging.getLogger(__name__)

# Close code of a socket whose secret is wrong, replaced or revoked: the page stops reconnecting.
CLOSE_GONE = 4404
FORWARDED = {"machine.update", "machine.heartbeat", "kiosk.recheck"}


class KioskConsumer(AsyncJsonWebsocketConsumer):
    screen: KioskScreen | None = None
    watcher: asyncio.Task[None] | None = None

    async def dispatch(self, message: dict[str, Any]) -> None:
        kind = str(message.get("type", ""))
        if kind.startswith("websocket.") or kind in FORWARDED:
            await super().dispatch(message)

    async def connect(self) -> None:
        secret = str(self.scope["url_route"]["kwargs"].get("secret", ""))
        screen = await database_sync_to_async(kiosk.screen_for)(secret)
        if screen is None:
            # Accepted, then closed with a code the page understands: it stops knocking. Nothing else is said.
            await self.accept()
            await self.close(code=CLOSE_GONE)
            return
        self.screen = screen
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.channel_layer.group_add(kiosk.screen_group(screen.pk), self.channel_name)
        await self.accept()
        await self.send_json(await database_sync_to_async(self._visit)())
        self.watcher = asyncio.create_task(self._watch())

    async def disconnect(self, code: int) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        if self.screen is not None:
            await self.channel_layer.group_discard(GROUP, self.channel_name)
            await self.channel_layer.group_discard(kiosk.screen_group(self.screen.pk), self.channel_name)

    def _visit(self) -> dict[str, Any]:
        """Stamp "last opened" (at most once a minute) and read every tile."""
        assert self.screen is not None
        kiosk.touch(self.screen)
        return kiosk.snapshot()

    def _valid(self) -> bool:
        return self.screen is not None and kiosk.still_valid(self.screen.pk, self.screen.token_hash)

    async def _recheck(self) -> bool:
        """Close the socket unless the screen's secret still stands; else send a fresh snapshot."""
        if not await database_sync_to_async(self._valid)():
            logger.info("Kiosk screen #%s closed: its address no longer works", getattr(self.screen, "pk", None))
            await self.close(code=CLOSE_GONE)
            return False
        await self.send_json(await database_sync_to_async(self._visit)())
        return True

    async def _watch(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(kiosk.RECHECK_SECONDS)
                try:
                    if not await self._recheck():
                        return
                except Exception:  # the database is away for a moment: try again at the next round
                    logger.warning("Kiosk screen re-check failed", exc_info=True)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The page sends nothing; anything received is ignored."""

    async def kiosk_recheck(self, event: dict[str, Any]) -> None:
        await self._recheck()

    async def machine_update(self, event: dict[str, Any]) -> None:
        tile = event["tile"]
        try:
            locked = await database_sync_to_async(kiosk.locks)([tile["id"]])
        except Exception:  # the database is away: the next snapshot (RECHECK_SECONDS) brings the tile
            logger.warning("Kiosk tile of machine #%s not sent (locks unreadable)", tile["id"], exc_info=True)
            return
        await self.send_json({"type": "machine.update", "tile": kiosk.kiosk_tile(tile, locked.get(tile["id"]))})

    async def machine_heartbeat(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "machine.heartbeat", "id": event["id"], "last_seen": event["last_seen"]})
