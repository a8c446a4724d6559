"""The live dashboard's websocket: staff only, one group, events forwarded as they come.

Async on purpose: a sync consumer holds a thread per message, and 500 open dashboards each receiving every
event would queue on the thread pool. The tiles are computed once by the sender (:mod:`.events`), so a
consumer does no database work per event; it only reads the database once, for the snapshot it sends on
connect (a reconnecting page catches up with what it missed).

A socket stays open only while its session grants portal access: each one also joins its member's own group, and
``recheck_access`` (called when a member is saved or deleted) makes those sockets check their session again and
close if it no longer does (access revoked, member erased, password changed).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

from asgiref.sync import async_to_sync
from channels.auth import get_user
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from .events import GROUP
from .tiles import tiles

logger = logging.getLogger(__name__)

# Close code sent when the handshake is refused (Daphne answers the HTTP upgrade with 403).
CLOSE_FORBIDDEN = 4403


def _snapshot() -> dict[str, Any]:
    now = timezone.now()
    return {"type": "snapshot", "now": now.isoformat(), "tiles": tiles(now=now)}


class _Read:
    """One snapshot read, shared by the sockets that joined the group before it began."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.began: float | None = None  # set on the database thread when the read begins
        self.task: asyncio.Task[dict[str, Any]] = loop.create_task(database_sync_to_async(self.run)())

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
        read = _Read(loop)
        _latest[loop] = read
    return await asyncio.shield(read.task)


def member_group(member_id: int) -> str:
    """The group of one member's open dashboards."""
    return f"{GROUP}.member.{member_id}"


def may_watch(user: Any) -> bool:
    """Portal staff whose access stands: the only people who see the dashboard."""
    return bool(
        user is not None
        and user.is_authenticated
        and user.is_active
        and user.is_staff
        and getattr(user, "deleted_at", None) is None
    )


def recheck_access(member_id: int) -> None:
    """Make the member's open dashboards check their session again, once the change in hand commits."""

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            async_to_sync(layer.group_send)(member_group(member_id), {"type": "access.check"})
        except Exception:  # Redis away: the sockets re-check on their next connect
            logger.warning("access re-check not sent (channel layer unavailable)", exc_info=True)

    transaction.on_commit(send)


def member_saved(sender: Any, instance: Any, created: bool, update_fields: Any = None, **kwargs: Any) -> None:
    """post_save of the user model (connected in MachinesConfig.ready): a new member has no socket yet, and a
    login only stamps last_login."""
    if not created and set(update_fields or ()) != {"last_login"}:
        recheck_access(instance.pk)


def member_gone(sender: Any, instance: Any, **kwargs: Any) -> None:
    """post_delete of the user model."""
    recheck_access(instance.pk)


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if not may_watch(user):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.member_id = user.pk
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.channel_layer.group_add(member_group(self.member_id), self.channel_name)
        self.joined = True
        joined_at = time.monotonic()
        await self.accept()
        await self.send_json(await snapshot(joined_at))

    async def disconnect(self, code: int) -> None:
        if getattr(self, "joined", False):
            await self.channel_layer.group_discard(GROUP, self.channel_name)
            await self.channel_layer.group_discard(member_group(self.member_id), self.channel_name)

    async def still_allowed(self) -> bool:
        """Read the session afresh (the scope's copy is cached): a new password (the session's hash no longer
        matches), a deleted session or lost access all end it. Without a session (tests), the member's row decides."""
        session = self.scope.get("session")
        if session is not None and session.session_key:
            user = await get_user({"session": session.__class__(session_key=session.session_key)})
        else:
            user = await get_user_model().objects.filter(pk=self.member_id).afirst()
        return may_watch(user) and user.pk == self.member_id

    async def access_check(self, event: dict[str, Any]) -> None:
        if not await self.still_allowed():
            logger.info("Dashboard of member #%s closed: access revoked", self.member_id)
            await self.close(code=CLOSE_FORBIDDEN)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The page sends nothing; anything received is ignored."""

    # One handler per event type of .events.
    async def machine_update(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "machine.update", "tile": event["tile"]})

    async def machine_heartbeat(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "machine.heartbeat", "id": event["id"], "last_seen": event["last_seen"]})
