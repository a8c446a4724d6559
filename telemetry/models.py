"""What the bridge learns about the boards themselves."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


def board_username(machine_id: int) -> str:
    """The MQTT user name of a machine's board (its password and ACL entries: telemetry/credentials.py)."""
    return f"board-{machine_id}"


def switch_username(machine_id: int) -> str:
    """The MQTT user name of a machine's Shelly power switch."""
    return f"switch-{machine_id}"


class Board(models.Model):
    """The board fitted to a machine, as it last announced itself with ``alive``.

    One board per machine, like the old backend: a swapped board updates the row.
    """

    machine = models.OneToOneField(
        "machines.Machine", on_delete=models.CASCADE, related_name="board", verbose_name=_("machine")
    )
    serial = models.CharField(_("serial"), max_length=32, blank=True)
    ip_address = models.GenericIPAddressField(_("IP address"), null=True, blank=True)
    firmware = models.CharField(_("firmware"), max_length=100, blank=True)
    free_heap = models.PositiveIntegerField(_("free heap (bytes)"), null=True, blank=True)
    last_seen = models.DateTimeField(_("last seen"), default=timezone.now)
    legacy_id = models.PositiveIntegerField(null=True, blank=True, unique=True, editable=False)

    class Meta:
        ordering = ["machine"]
        verbose_name = _("board")
        verbose_name_plural = _("boards")

    def __str__(self) -> str:
        return f"{self.serial or '?'} @ {self.machine}"


class BoardCredential(models.Model):
    """The MQTT account of the board of one machine: ``board-<id>``, allowed only on its own topics.

    Only the hash is stored, in Mosquitto's own password-file format (PBKDF2-SHA512, ``$7$``): the secret is
    shown once, when it is made (``manage.py mosquitto_credentials`` or the portal's System page).
    """

    machine = models.OneToOneField(
        "machines.Machine", on_delete=models.CASCADE, related_name="board_credential", verbose_name=_("machine")
    )
    password_hash = models.CharField(_("password hash"), max_length=255)
    created_at = models.DateTimeField(_("created"), default=timezone.now)

    class Meta:
        ordering = ["machine"]
        verbose_name = _("board credential")
        verbose_name_plural = _("board credentials")

    def __str__(self) -> str:
        return self.username

    @property
    def username(self) -> str:
        return board_username(self.machine_id)


def validate_switch_topic(topic: str) -> None:
    """A topic a board may publish ``on``/``off`` to: one concrete topic, outside Fab-O-Matic's own topics.

    Under ``<TOPIC>/`` a board could speak for another machine, under ``stats/`` for the bridge; ``$`` topics belong
    to the broker; wildcards would grant more than one topic; the ACL file is made of lines of words.
    """
    if any(c in topic for c in "+#") or topic.startswith("$"):
        raise ValidationError(_("A switch topic is one topic: no + or # wildcards, no leading $."))
    if any(c.isspace() or not c.isprintable() for c in topic):
        raise ValidationError(_("A switch topic has no spaces or control characters."))
    # The root of the bridge's stats topics (stats/<client id>); imported here, as telemetry.mqtt imports the models.
    from .mqtt import STATS_TOPIC

    for root in (settings.MQTT["TOPIC"], STATS_TOPIC):
        # Case-insensitive, as the bridge compares its topic root (protocol.py).
        if topic.casefold() == root.casefold() or topic.casefold().startswith(f"{root.casefold()}/"):
            raise ValidationError(_("A switch topic must not be under %(root)s/."), params={"root": root})


class SwitchCredential(models.Model):
    """The Shelly power switch of one machine (docs/protocol.md §2.9) and its MQTT account ``switch-<id>``.

    The machine's board publishes ``on``/``off`` to ``topic`` with its own account; the switch logs in with this one
    and may only read ``topic``. As for BoardCredential, only the hash of the secret is stored.
    """

    machine = models.OneToOneField(
        "machines.Machine", on_delete=models.CASCADE, related_name="switch_credential", verbose_name=_("machine")
    )
    topic = models.CharField(
        _("switch topic"),
        max_length=128,
        unique=True,  # one switch, one board: no board may switch another machine's power
        validators=[validate_switch_topic],
        help_text=_("The board's switch topic, e.g. shellies/shelly1-ABC123/relay/0/command."),
    )
    password_hash = models.CharField(_("password hash"), max_length=255)
    created_at = models.DateTimeField(_("created"), default=timezone.now)

    class Meta:
        ordering = ["machine"]
        verbose_name = _("switch credential")
        verbose_name_plural = _("switch credentials")

    def __str__(self) -> str:
        return self.username

    @property
    def username(self) -> str:
        return switch_username(self.machine_id)
