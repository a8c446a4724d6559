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


class FirmwareImage(models.Model):
    """A firmware image uploaded by staff for one board environment (telemetry/firmware.py validates it).

    Stored in the database (a few MB each, a handful per lab): the backup and the restore carry it, and no media
    directory has to be served, permissioned or backed up separately.
    """

    environment = models.CharField(_("environment"), max_length=64)
    version = models.CharField(_("version"), max_length=64)
    data = models.BinaryField(_("image"), editable=False)
    md5 = models.CharField(_("MD5"), max_length=32, editable=False)
    size = models.PositiveIntegerField(_("size (bytes)"), editable=False)
    filename = models.CharField(_("file name"), max_length=200, blank=True)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("uploaded by"),
    )
    uploaded_at = models.DateTimeField(_("uploaded"), default=timezone.now)

    class Meta:
        ordering = ["environment", "-uploaded_at"]
        verbose_name = _("firmware image")
        verbose_name_plural = _("firmware images")
        constraints = [models.UniqueConstraint(fields=["environment", "version"], name="firmware_env_version")]

    def __str__(self) -> str:
        return f"{self.environment} {self.version}"


class Rollout(models.Model):
    """One image pushed to chosen boards of its environment: a canary first, then the others one at a time
    (telemetry/rollout.py runs it)."""

    class State(models.TextChoices):
        RUNNING = "running", _("running")
        DONE = "done", _("done")
        FAILED = "failed", _("stopped after a failure")
        CANCELLED = "cancelled", _("cancelled")

    image = models.ForeignKey(FirmwareImage, on_delete=models.PROTECT, related_name="rollouts", verbose_name=_("image"))
    state = models.CharField(_("state"), max_length=10, choices=State.choices, default=State.RUNNING)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("started by"),
    )
    started_at = models.DateTimeField(_("started"), default=timezone.now)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        verbose_name = _("firmware rollout")
        verbose_name_plural = _("firmware rollouts")

    def __str__(self) -> str:
        return f"{self.image} ({self.started_at:%Y-%m-%d %H:%M})"


class OtaPush(models.Model):
    """The image of a rollout pushed to one machine's board: waiting → pushing → waiting for the board → done, or
    failed with the reason (or skipped when the rollout stopped before it)."""

    class State(models.TextChoices):
        WAITING = "waiting", _("waiting")
        PUSHING = "pushing", _("pushing")
        CONFIRMING = "confirming", _("waiting for the board")
        DONE = "done", _("done")
        FAILED = "failed", _("failed")
        SKIPPED = "skipped", _("not pushed")

    class Reason(models.TextChoices):
        """Why a push waits or failed. The failures of the transfer share their values with espota.Failure."""

        IN_USE = "in-use", _("waiting: in use")
        OFFLINE = "offline", _("waiting: the board is offline")
        NO_ADDRESS = "no-address", _("waiting: the board has not reported its IP address")
        NO_ANSWER = "no-answer", _("no answer to the invitation (board off, wrong IP, UDP port blocked or busy)")
        PASSWORD_REQUIRED = "password-required", _("the board asks for an OTA password")
        REFUSED = "refused", _("the board refused the update")
        NO_CONNECTION = "no-connection", _("the board never connected back to the server")
        BROKEN_TRANSFER = "broken-transfer", _("the transfer broke off")
        MD5_REJECTED = "md5-rejected", _("the board rejected the image (MD5 mismatch)")
        BOARD_ERROR = "board-error", _("the board reported an update error")
        TIMEOUT = "timeout", _("the board never confirmed the image")
        NETWORK = "network", _("the server could not open the OTA connection")
        OLD_VERSION = "old-version", _("the board came back with the old version")
        NOT_BACK = "not-back", _("the board did not come back with the new version")
        INTERRUPTED = "interrupted", _("interrupted: the server stopped during the transfer")
        STOPPED = "stopped", _("not pushed: the rollout stopped after a failure")
        CANCELLED = "cancelled", _("not pushed: the rollout was cancelled")

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="pushes", verbose_name=_("rollout"))
    machine = models.ForeignKey(
        "machines.Machine", on_delete=models.CASCADE, related_name="ota_pushes", verbose_name=_("machine")
    )
    position = models.PositiveSmallIntegerField(_("order"), default=0)  # 0: the canary
    state = models.CharField(_("state"), max_length=10, choices=State.choices, default=State.WAITING)
    reason = models.CharField(_("reason"), max_length=20, choices=Reason.choices, blank=True)
    detail = models.CharField(_("detail"), max_length=300, blank=True)
    from_version = models.CharField(_("previous firmware"), max_length=100, blank=True)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    pushed_at = models.DateTimeField(_("image sent"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)

    class Meta:
        ordering = ["rollout", "position"]
        verbose_name = _("firmware push")
        verbose_name_plural = _("firmware pushes")

    def __str__(self) -> str:
        return f"{self.rollout.image} → #{self.machine_id}"

    @property
    def is_canary(self) -> bool:
        return self.position == 0


class HeapSample(models.Model):
    """The lowest free heap a board reported in one hour (``alive``): the last 48 hours per board, written by the
    bridge once an hour per board (telemetry/fastpath.py ``HeapMinima``)."""

    machine = models.ForeignKey("machines.Machine", on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField()
    minimum = models.PositiveIntegerField()

    class Meta:
        ordering = ["machine", "hour"]
        constraints = [models.UniqueConstraint(fields=["machine", "hour"], name="heap_sample_machine_hour")]

    def __str__(self) -> str:
        return f"#{self.machine_id} {self.hour:%Y-%m-%d %H}h: {self.minimum}"
