"""Remote start and stop from the portal (docs/protocol.md §4): ``{"request_type", "uid"}`` on ``<TOPIC>/<id>/request``.

The board then behaves as if the card had been swiped (start: ``checkuser`` + ``startuse``; stop: ``stopuse`` for
whoever is logged in), so the usual bridge handling records the use. There is no acknowledgement on MQTT.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Literal

from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from machines import services
from machines.models import Machine, Use
from members.models import Card, Member

from .mqtt import build_client, request_topic

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 5.0


class RemoteCommandError(Exception):
    """A remote command was not sent. ``str(exc)`` is a translated message for the user."""

    message = _("The command could not be sent.")

    def __init__(self, message: str | None = None) -> None:
        super().__init__(str(message or self.message))


class MachineOffline(RemoteCommandError):
    message = _("The machine is offline: its board has not been heard from recently.")


class NoActiveCard(RemoteCommandError):
    message = _("You have no active card: a remote start or stop needs one.")


class MemberDisabled(RemoteCommandError):
    message = _("This member is disabled and may not use machines.")


class BrokerUnavailable(RemoteCommandError):
    message = _("The MQTT broker cannot be reached.")


def send_remote_command(machine: Machine, action: Literal["start", "stop"], member: Member) -> None:
    """Ask a board to log ``member`` in (start) or to log its current user out (stop).

    Refused with a :class:`RemoteCommandError` subclass when the machine is offline (S22), the member is disabled or
    has no active card. The board only accepts a request with both keys, so the uid is the member's own card.
    """
    if action not in ("start", "stop"):
        raise ValueError(f"unknown remote action {action!r}")
    machine.refresh_from_db(fields=["last_seen"])
    if not machine.is_online():
        raise MachineOffline()
    if not member.can_use_machines:
        raise MemberDisabled()
    card = member.active_card
    if card is None:
        raise NoActiveCard()
    _publish(machine, action, card)
    logger.info("remote %s sent to machine %s for member %s", action, machine.pk, member.pk)


def _publish(machine: Machine, action: Literal["start", "stop"], card: Card) -> None:
    payload = json.dumps({"request_type": action, "uid": card.uid})
    # A client id of its own: reusing the bridge's would disconnect the bridge.
    client = build_client(client_id=f"fabomatic-remote-{uuid.uuid4().hex[:12]}")
    try:
        client.connect(settings.MQTT["HOST"], settings.MQTT["PORT"], keepalive=10)
        client.loop_start()
        info = client.publish(request_topic(machine.pk), payload, qos=1)
        info.wait_for_publish(timeout=PUBLISH_TIMEOUT)
        if not info.is_published():
            raise BrokerUnavailable()
    except (OSError, RuntimeError, ValueError) as exc:
        logger.warning("remote %s for machine %s not sent: %s", action, machine.pk, exc)
        raise BrokerUnavailable() from exc
    finally:
        client.disconnect()
        client.loop_stop()


def end_use(use: Use, *, by: Member) -> bool:
    """End an open use from the portal without ever leaving two overlapping uses on the machine.

    Board online: the board is asked to stop (the remote stop); its ``stopuse`` then closes the use with the real
    duration, and the use stays open until then, so an ``inuse`` in between is the same session. The stop carries
    the staff member's card, or the user's when staff have none (the board logs out whoever is on). Refused with a
    :class:`RemoteCommandError` when it cannot be sent. Board offline: the use is closed here, now; a later
    ``inuse`` of the board cannot start before this end (telemetry/sessions.py). Returns True when it was closed
    here, False when the board was asked to stop.
    """
    machine = Machine.objects.get(pk=use.machine_id)
    if not machine.is_online():
        services.close_use(use, ended_at=timezone.now())
        return True
    card = by.active_card or use.member.active_card
    if card is None:
        raise NoActiveCard()
    _publish(machine, "stop", card)
    logger.info("remote stop sent to machine %s to end use %s, by member %s", machine.pk, use.pk, by.pk)
    return False
