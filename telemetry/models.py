"""What the bridge learns about the boards themselves."""

from __future__ import annotations

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


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
        return f"board-{self.machine_id}"
