"""The kiosk: a read-only live status screen for the lab, opened by a secret address (no login on that screen).

- Addresses: a screen's secret is ``secrets.token_urlsafe(32)`` (256 bits); only its SHA-256 is stored
  (``KioskScreen.token_hash``), so the address is shown once, when it is made. A revoked screen, a replaced secret
  or a wrong one finds nothing: the page answers 404 and the socket closes.
- Tiles: the dashboard's tiles (:mod:`machines.dashboard.tiles`, the one tiles query) cut down to what a room may
  see — name, state, the first name of whoever is on it (none with ``KIOSK_SHOW_NAMES`` off), the time in use and
  the maintenance due; never an e-mail, a surname, a card UID, a board's address or firmware — with the machine's
  locks (an open "out of order" fault, an open check after use) read by two grouped queries.
- Order: locks first (out of order, then to check), then blocked, then maintenance due, then the rest, by name.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Literal, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from members.models import Member

from .dashboard.tiles import STATES, Tile, tiles
from .models import FaultReport, KioskScreen, MachineCheck

logger = logging.getLogger(__name__)

SECRET_BYTES = 32
# token_urlsafe(32) is 43 characters of the URL-safe alphabet; anything else is not a secret of ours.
SECRET_FORMAT = re.compile(r"[A-Za-z0-9_-]{43}")
SEEN_EVERY = timedelta(seconds=60)  # last_seen_at is written at most this often
RECHECK_SECONDS = 30  # an open screen checks its secret (and refreshes its tiles) this often

KioskState = Literal["out_of_order", "to_check", "in_use", "blocked", "maintenance", "offline", "free"]
# Once each, should the dashboard's tiles learn states of their own for the locks.
KIOSK_STATES: tuple[KioskState, ...] = tuple(dict.fromkeys(("out_of_order", "to_check", *STATES)))
# Faults and locks first, then blocked, then maintenance due, then the rest (by name).
RANK: dict[str, int] = {"out_of_order": 0, "to_check": 1, "blocked": 2, "maintenance": 3}
REST = 4


class KioskTile(TypedDict):
    id: int
    name: str
    state: KioskState
    user: str | None  # first name, or None (nobody, or names hidden by KIOSK_SHOW_NAMES)
    since: str | None  # ISO start of the open use
    maintenance: str  # the first item due
    last_seen: str | None  # the screen turns a silent machine offline by itself


# --- Secrets ----------------------------------------------------------------------------------------------------


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> tuple[str, str]:
    """(secret, its hash)."""
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return secret, hash_secret(secret)


def create_screen(name: str, *, by: Member | None) -> tuple[KioskScreen, str]:
    """A new screen and its secret (to show once: only the hash is kept)."""
    secret, token_hash = new_secret()
    screen = KioskScreen.objects.create(name=name.strip(), token_hash=token_hash, created_by=by)
    return screen, secret


def replace_secret(screen: KioskScreen) -> str:
    """A new address for the screen; the old one stops working at once. Not for a revoked screen."""
    secret, token_hash = new_secret()
    # Conditional: a revocation by someone else meanwhile wins.
    if not KioskScreen.objects.filter(pk=screen.pk, revoked_at__isnull=True).update(token_hash=token_hash):
        raise ValueError("a revoked kiosk screen stays revoked")
    screen.token_hash = token_hash
    close_open_screens(screen.pk)
    return secret


def revoke(screen: KioskScreen, now: datetime | None = None) -> bool:
    """The screen's address stops working, for good. Returns whether it was active."""
    now = now or timezone.now()
    if not KioskScreen.objects.filter(pk=screen.pk, revoked_at__isnull=True).update(revoked_at=now):
        screen.refresh_from_db(fields=["revoked_at"])
        return False
    screen.revoked_at = now
    close_open_screens(screen.pk)
    return True


def screen_group(screen_id: int) -> str:
    """The channel-layer group of one screen's open sockets."""
    return f"kiosk.{screen_id}"


def close_open_screens(screen_id: int) -> None:
    """Once the change in hand commits, the screen's open sockets check their secret again (and close). Should the
    message be lost (Redis away), each socket re-checks on its own within ``RECHECK_SECONDS``."""

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            async_to_sync(layer.group_send)(screen_group(screen_id), {"type": "kiosk.recheck"})
        except Exception:
            logger.warning("kiosk screen #%s: re-check not sent (channel layer unavailable)", screen_id, exc_info=True)

    transaction.on_commit(send)


def screen_for(secret: str) -> KioskScreen | None:
    """The active screen of this secret, or None (malformed, unknown, replaced or revoked)."""
    if not SECRET_FORMAT.fullmatch(secret):
        return None
    return KioskScreen.objects.filter(token_hash=hash_secret(secret), revoked_at__isnull=True).first()


def still_valid(screen_id: int, token_hash: str) -> bool:
    """The screen still exists, is not revoked and keeps this secret."""
    return KioskScreen.objects.filter(pk=screen_id, token_hash=token_hash, revoked_at__isnull=True).exists()


def touch(screen: KioskScreen, now: datetime | None = None) -> None:
    """Stamp "last opened", at most once a minute (the page and its socket call this on every visit)."""
    now = now or timezone.now()
    if screen.last_seen_at is None or now - screen.last_seen_at >= SEEN_EVERY:
        screen.last_seen_at = now
        KioskScreen.objects.filter(pk=screen.pk).update(last_seen_at=now)


def kiosk_url(secret: str, request: HttpRequest | None = None) -> str:
    """The screen's full address: on PUBLIC_URL when it is set, else on the host the request came to."""
    path = reverse("kiosk", args=[secret])
    if settings.PUBLIC_URL_SET or request is None:
        return settings.PUBLIC_URL + path
    return request.build_absolute_uri(path)


# --- Tiles ------------------------------------------------------------------------------------------------------


def locks(machine_ids: Collection[int] | None = None) -> dict[int, KioskState]:
    """The machines locked for everyone but staff, and why: an open "out of order" fault wins over an open check.

    Two grouped queries on the partial indexes of open faults and open checks, whatever the history's size."""
    faults: QuerySet[FaultReport] = FaultReport.objects.filter(
        closed_at__isnull=True, severity=FaultReport.Severity.OUT_OF_ORDER
    )
    checks: QuerySet[MachineCheck] = MachineCheck.objects.filter(checked_at__isnull=True)
    if machine_ids is not None:
        faults, checks = faults.filter(machine_id__in=machine_ids), checks.filter(machine_id__in=machine_ids)
    found: dict[int, KioskState] = {}
    for machine_id in checks.order_by().values_list("machine_id", flat=True).distinct():
        found[machine_id] = "to_check"
    for machine_id in faults.order_by().values_list("machine_id", flat=True).distinct():
        found[machine_id] = "out_of_order"
    return found


def kiosk_tile(tile: Tile, lock: KioskState | None, *, show_names: bool | None = None) -> KioskTile:
    """What a screen in the room shows of a dashboard tile: no board address, no firmware, a first name at most."""
    if show_names is None:
        show_names = settings.KIOSK_SHOW_NAMES
    state: KioskState
    if lock is not None:
        state = lock
    elif tile["state"] in KIOSK_STATES:
        state = tile["state"]
    else:  # a state the dashboard may add one day: what the fields say
        state = "in_use" if tile["since"] else "free"
    return KioskTile(
        id=tile["id"],
        name=tile["name"],
        state=state,
        user=(tile["user"] or None) if show_names else None,
        since=tile["since"],
        maintenance=tile["maintenance"],
        last_seen=tile["last_seen"],
    )


def sort_key(tile: KioskTile) -> tuple[int, str, int]:
    return RANK.get(tile["state"], REST), tile["name"].casefold(), tile["id"]


def kiosk_tiles(machine_ids: Collection[int] | None = None, now: datetime | None = None) -> list[KioskTile]:
    """The screen's tiles (all machines when None), locks first: the dashboard's three queries and two more."""
    locked = locks(machine_ids)
    found = [kiosk_tile(tile, locked.get(tile["id"])) for tile in tiles(machine_ids, now=now)]
    return sorted(found, key=sort_key)


def snapshot(now: datetime | None = None) -> dict[str, object]:
    now = now or timezone.now()
    return {"type": "snapshot", "now": now.isoformat(), "tiles": kiosk_tiles(now=now)}
