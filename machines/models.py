"""Machines, what may use them, how they are maintained and how they were used."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

# The board reads 16-bit numbers: machine ids, logoff and grace minutes must fit.
U16 = [MinValueValidator(0), MaxValueValidator(65535)]
LCD_WIDTH = 16
# A plan item is "due soon" when less than this fraction of its interval is left (portal badges, weekly summary).
DUE_SOON_FRACTION = 0.1


def new_report_token() -> str:
    return secrets.token_urlsafe(24)


class MachineType(models.Model):
    name = models.CharField(_("name"), max_length=100, unique=True)
    logoff_minutes = models.PositiveIntegerField(
        _("auto-logoff (minutes)"), default=1440, validators=U16, help_text=_("0 turns auto-logoff off.")
    )
    grace_minutes = models.PositiveIntegerField(
        _("power-off grace (minutes)"),
        default=2,
        validators=U16,
        help_text=_("How long power stays on after logout. 0 cuts power at once."),
    )
    requires_authorization = models.BooleanField(
        _("authorization required"),
        default=True,
        help_text=_("Untick to let every enabled member use machines of this type."),
    )
    # New authorizations for machines of this type take this rule (see Authorization.Expiry).
    training_expiry = models.CharField(
        _("training expires"),
        max_length=12,
        choices=[
            ("never", _("never")),
            ("after_days", _("a number of days after the training")),
            ("idle_days", _("after a number of days without using the machine")),
        ],
        default="never",
    )
    training_days = models.PositiveIntegerField(
        _("days"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text=_("For a training that expires: how many days."),
    )
    check_after_use = models.BooleanField(
        _("check after every use"),
        default=False,
        help_text=_(
            "After each use only staff may log in until one of them confirms the machine was checked "
            "(holding their card 10 s at the machine, or in the portal)."
        ),
    )
    trainers = models.ManyToManyField(
        "members.Member",
        blank=True,
        related_name="trains_types",
        verbose_name=_("trainers"),
        help_text=_("Staff who may grant authorizations for every machine of this type."),
    )
    legacy_id = models.PositiveIntegerField(null=True, blank=True, unique=True, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name = _("machine type")
        verbose_name_plural = _("machine types")

    def __str__(self) -> str:
        return self.name


class Machine(models.Model):
    # The primary key IS the id the board is configured with (topic machine/<id>).
    id = models.PositiveIntegerField(_("board id"), primary_key=True, validators=[MinValueValidator(1), *U16[1:]])
    name = models.CharField(_("name"), max_length=100, unique=True)
    type = models.ForeignKey(MachineType, on_delete=models.PROTECT, related_name="machines", verbose_name=_("type"))
    blocked = models.BooleanField(_("blocked"), default=False, help_text=_("Only super users may log in."))
    hours = models.FloatField(
        _("hour meter"),
        default=0.0,
        validators=[MinValueValidator(0)],
        help_text=_("Hours of closed use; maintenance is counted on this meter."),
    )
    last_seen = models.DateTimeField(_("last seen"), null=True, blank=True)
    # The hours on the meter that no use record backs (an old backend's accumulator, a meter set by hand):
    # hours == hours_offset + the closed uses' durations, which services.recount_machine() re-derives.
    hours_offset = models.FloatField(_("hours before the recorded history"), default=0.0, editable=False)
    # The last request the board sent live (not a replay, not an alive). A replayed session happened after it:
    # the bridge uses it to tell a session replayed from the board's offline buffer from a copy of one it saw.
    heard_live_at = models.DateTimeField(_("last live request"), null=True, blank=True, editable=False)
    trainers = models.ManyToManyField(
        "members.Member",
        blank=True,
        related_name="trains_machines",
        verbose_name=_("trainers"),
        help_text=_("Staff who may grant authorizations for this machine."),
    )
    # The secret part of the fault report page's address (the QR sticker): nobody can guess it from the id.
    report_token = models.CharField(
        _("fault report code"), max_length=43, unique=True, default=new_report_token, editable=False
    )

    class Meta:
        ordering = ["name"]
        verbose_name = _("machine")
        verbose_name_plural = _("machines")

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def online_since(now: datetime | None = None) -> datetime:
        """A machine is online when its board was heard from after this moment (``settings.ONLINE_SECONDS`` ago)."""
        return (now or timezone.now()) - timedelta(seconds=settings.ONLINE_SECONDS)

    def is_online(self, now: datetime | None = None) -> bool:
        return self.last_seen is not None and self.last_seen > self.online_since(now)


class Authorization(models.Model):
    member = models.ForeignKey(
        "members.Member", on_delete=models.CASCADE, related_name="authorizations", verbose_name=_("member")
    )
    machine = models.ForeignKey(
        Machine, on_delete=models.CASCADE, related_name="authorizations", verbose_name=_("machine")
    )
    granted_at = models.DateTimeField(_("trained"), default=timezone.now)

    class Expiry(models.TextChoices):
        NEVER = "never", _("never")
        AFTER_DAYS = "after_days", _("a number of days after the training")
        ON_DATE = "on_date", _("on a date")
        IDLE_DAYS = "idle_days", _("after a number of days without using the machine")

    expiry = models.CharField(_("expires"), max_length=12, choices=Expiry.choices, default=Expiry.NEVER)
    expiry_days = models.PositiveIntegerField(_("days"), null=True, blank=True, validators=[MinValueValidator(1)])
    # When it lapses, whatever the rule (machines/safety.py keeps it): trained + days; the date; the latest use (or
    # the training) + days, moved by each use; None for NEVER. One column, so every check is one comparison.
    expires_at = models.DateTimeField(_("expires on"), null=True, blank=True)
    # The member's latest use of the machine (the bridge stamps it when a use opens): IDLE_DAYS counts from it.
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True, editable=False)
    trained_by = models.ForeignKey(
        "members.Member",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="trainings_given",
        verbose_name=_("trained by"),
    )

    class Meta:
        verbose_name = _("authorization")
        verbose_name_plural = _("authorizations")
        constraints = [
            models.UniqueConstraint(fields=["member", "machine"], name="one_authorization_per_member_machine"),
            models.CheckConstraint(
                condition=Q(expiry__in=["never", "on_date"]) | Q(expiry_days__isnull=False),
                name="authorization_expiry_has_days",
            ),
        ]
        indexes = [
            # Expiring and expired trainings (portal lists, reminders) without reading every authorization.
            models.Index(fields=["expires_at"], condition=Q(expires_at__isnull=False), name="authorization_expiring"),
        ]

    def __str__(self) -> str:
        return f"{self.member} → {self.machine}"

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())


class MaintenancePlan(models.Model):
    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="plans", verbose_name=_("machine"))
    hours_between = models.FloatField(_("every (hours)"), validators=[MinValueValidator(0.001)])
    description = models.CharField(_("description"), max_length=500)
    lcd_message = models.CharField(
        _("LCD message"), max_length=LCD_WIDTH, blank=True, help_text=_("Shown on the board (16 characters).")
    )
    instructions_url = models.URLField(_("instructions"), blank=True)
    # The machine's hour meter when this item was last done: hours since = machine.hours - this.
    # It makes "maintenance due" O(1) whatever the length of the history.
    done_at_hours = models.FloatField(_("done at (hour meter)"), default=0.0)
    # When the latest intervention was done: a use that started before it counts before it, whenever it closes.
    done_at = models.DateTimeField(_("last done"), null=True, blank=True, editable=False)
    legacy_id = models.PositiveIntegerField(null=True, blank=True, unique=True, editable=False)

    class Meta:
        ordering = ["machine", "pk"]
        verbose_name = _("maintenance plan")
        verbose_name_plural = _("maintenance plans")

    def __str__(self) -> str:
        return f"{self.machine}: {self.description}"

    def hours_since(self, machine_hours: float | None = None) -> float:
        meter = self.machine.hours if machine_hours is None else machine_hours
        return max(0.0, meter - self.done_at_hours)

    def is_due(self, machine_hours: float | None = None) -> bool:
        return self.hours_since(machine_hours) > self.hours_between

    @staticmethod
    def due_condition(machine_hours: F) -> Q:
        """:meth:`is_due` in SQL, for filters: ``machine_hours`` is the meter's expression, e.g.
        ``F("machine__hours")`` or ``OuterRef("hours")`` (tests/test_rules.py proves the two agree)."""
        return Q(hours_between__lt=machine_hours - F("done_at_hours"))

    def is_due_soon(self, machine_hours: float | None = None) -> bool:
        """Not due yet, with less than ``DUE_SOON_FRACTION`` of its interval left."""
        return not self.is_due(machine_hours) and (
            self.hours_since(machine_hours) > (1 - DUE_SOON_FRACTION) * self.hours_between
        )

    @property
    def short_label(self) -> str:
        """The item's name where room is short (the board's LCD, portal badges): its LCD message, or the start of
        its description."""
        return self.lcd_message or self.description[:LCD_WIDTH]


class Intervention(models.Model):
    plan = models.ForeignKey(
        MaintenancePlan, on_delete=models.CASCADE, related_name="interventions", verbose_name=_("maintenance")
    )
    machine = models.ForeignKey(
        Machine, on_delete=models.CASCADE, related_name="interventions", verbose_name=_("machine")
    )
    member = models.ForeignKey(
        "members.Member", on_delete=models.PROTECT, related_name="interventions", verbose_name=_("member")
    )
    performed_at = models.DateTimeField(_("when"), default=timezone.now)
    machine_hours = models.FloatField(_("hour meter"), default=0.0)
    replay = models.BooleanField(_("replayed"), default=False, help_text=_("Sent late by a board that was offline."))
    note = models.TextField(_("note"), blank=True, max_length=2000, help_text=_("What was done, parts used."))
    legacy_id = models.PositiveIntegerField(null=True, blank=True, unique=True, editable=False)

    class Meta:
        ordering = ["-performed_at"]
        verbose_name = _("intervention")
        verbose_name_plural = _("interventions")
        indexes = [
            # Machine page and weekly summary: latest interventions of a machine.
            models.Index(fields=["machine", "-performed_at"], name="intervention_machine_recent"),
            # GDPR purge: older than the retention.
            models.Index(fields=["performed_at"], name="intervention_performed"),
        ]

    def __str__(self) -> str:
        return f"{self.plan} @ {self.performed_at:%Y-%m-%d}"


class Use(models.Model):
    """One session of one member on one machine. ``ended_at`` is NULL while it is open.

    ``duration`` is what the hour meter counts. A use whose reported duration is not plausible (see
    ``services.judge_duration``) is recorded with ``flag`` set, ``duration`` 0 and the board's figure in
    ``reported_duration``: it is on record, shown to staff, and counted only once staff accept or correct it.
    """

    class Flag(models.TextChoices):
        NONE = "", _("none")
        BEYOND_LOGOFF = "beyond_logoff", _("longer than the auto-logoff")
        BEYOND_WINDOW = "beyond_window", _("longer than the time it could have lasted")

    member = models.ForeignKey(
        "members.Member", on_delete=models.PROTECT, related_name="uses", verbose_name=_("member")
    )
    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="uses", verbose_name=_("machine"))
    started_at = models.DateTimeField(_("started"))
    ended_at = models.DateTimeField(_("ended"), null=True, blank=True)
    last_seen = models.DateTimeField(_("last heard"))
    # Seconds, set when the use closes: aggregates (hours per week) sum it without date arithmetic.
    duration = models.PositiveIntegerField(_("duration (s)"), null=True, blank=True)
    replay = models.BooleanField(_("replayed"), default=False, help_text=_("Recorded from a board's offline buffer."))
    flag = models.CharField(_("flag"), max_length=20, choices=Flag.choices, default=Flag.NONE, blank=True)
    reported_duration = models.PositiveBigIntegerField(_("reported duration (s)"), null=True, blank=True)
    plausible_max = models.PositiveBigIntegerField(_("plausible at most (s)"), null=True, blank=True)
    legacy_id = models.PositiveIntegerField(null=True, blank=True, unique=True, editable=False)

    class Meta:
        ordering = ["-started_at"]
        verbose_name = _("use")
        verbose_name_plural = _("uses")
        constraints = [
            # The bridge's idempotency rests on this: a machine has at most one open use.
            models.UniqueConstraint(
                fields=["machine"], condition=Q(ended_at__isnull=True), name="one_open_use_per_machine"
            ),
        ]
        indexes = [
            # Uses list (newest first) and machine/member history. The admin orders by (-started_at, -pk):
            # with the pk in the index SQLite walks it instead of sorting a million rows.
            models.Index(fields=["-started_at", "-id"], name="use_started"),
            models.Index(fields=["machine", "-started_at", "-id"], name="use_machine_recent"),
            models.Index(fields=["member", "-started_at", "-id"], name="use_member_recent"),
            # Orphan clean-up in the bridge: open uses by last heartbeat.
            models.Index(fields=["last_seen"], condition=Q(ended_at__isnull=True), name="use_open_last_seen"),
            # GDPR purge: history older than the retention.
            models.Index(fields=["last_seen"], name="use_last_seen"),
            # Staff review: the flagged uses (few) without scanning the history.
            models.Index(fields=["-started_at"], condition=~Q(flag=""), name="use_flagged"),
        ]

    def __str__(self) -> str:
        return f"{self.member} on {self.machine} @ {self.started_at:%Y-%m-%d %H:%M}"

    @property
    def is_open(self) -> bool:
        return self.ended_at is None

    @property
    def hours(self) -> float:
        return (self.duration or 0) / 3600

    @property
    def is_flagged(self) -> bool:
        return bool(self.flag)


class Refusal(models.Model):
    """A refused ``checkuser``, with its reason: what staff read when a member says "the laser won't let me in"."""

    class Reason(models.TextChoices):
        UNKNOWN_CARD = "unknown_card", _("unknown card")
        NOT_AUTHORIZED = "not_authorized", _("no authorization")
        EXPIRED = "expired", _("training expired")
        DISABLED = "disabled", _("member disabled")
        BLOCKED = "blocked", _("machine blocked")
        FAULT = "fault", _("out of order (fault report)")
        TO_CHECK = "to_check", _("waiting for a check after use")
        MAINTENANCE_DUE = "maintenance_due", _("maintenance due")

    at = models.DateTimeField(_("when"), default=timezone.now)
    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="refusals", verbose_name=_("machine"))
    member = models.ForeignKey(
        "members.Member",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="refusals",
        verbose_name=_("member"),
    )
    uid = models.CharField(_("card UID"), max_length=14, blank=True)
    reason = models.CharField(_("reason"), max_length=20, choices=Reason.choices)

    class Meta:
        ordering = ["-at"]
        verbose_name = _("refusal")
        verbose_name_plural = _("refusals")
        indexes = [
            models.Index(fields=["machine", "-at"], name="refusal_machine_recent"),
            models.Index(fields=["member", "-at"], name="refusal_member_recent"),
            models.Index(fields=["at"], name="refusal_at"),  # dashboard (latest) and purge (oldest)
        ]

    def __str__(self) -> str:
        return f"{self.get_reason_display()} @ {self.at:%Y-%m-%d %H:%M}"


class TrainingArm(models.Model):
    """A trainer's "the next card without authorization on this machine, within the time, is trained by me"."""

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="arms", verbose_name=_("machine"))
    trainer = models.ForeignKey(
        "members.Member", on_delete=models.CASCADE, related_name="arms", verbose_name=_("trainer")
    )
    armed_at = models.DateTimeField(_("armed"), default=timezone.now)
    expires_at = models.DateTimeField(_("until"))
    used_at = models.DateTimeField(_("used"), null=True, blank=True)
    trainee = models.ForeignKey(
        "members.Member",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("trainee"),
    )

    class Meta:
        ordering = ["-armed_at"]
        verbose_name = _("sign-off at the machine")
        verbose_name_plural = _("sign-offs at the machine")
        indexes = [models.Index(fields=["machine", "-expires_at"], name="arm_machine_latest")]

    def __str__(self) -> str:
        return f"{self.machine} ← {self.trainer}"


class FaultReport(models.Model):
    """A fault reported from the machine's QR sticker (or by staff). "Out of order" locks the machine at its next
    login for everyone but staff, until staff close the report."""

    class Severity(models.TextChoices):
        MINOR = "minor", _("Minor: the machine can still be used")
        OUT_OF_ORDER = "out_of_order", _("Out of order: do not use")

    class Via(models.TextChoices):
        PORTAL = "portal", _("portal")
        MACHINE = "machine", _("card held at the machine")

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="faults", verbose_name=_("machine"))
    severity = models.CharField(_("severity"), max_length=12, choices=Severity.choices)
    description = models.TextField(_("what is wrong"), max_length=2000)
    reporter = models.CharField(_("reported by"), max_length=100, blank=True)
    created_at = models.DateTimeField(_("reported"), default=timezone.now)
    # A keyed hash of the reporting address, for the rate limit only (never the address itself).
    source = models.CharField(max_length=64, blank=True, editable=False)
    closed_at = models.DateTimeField(_("closed"), null=True, blank=True)
    closed_by = models.ForeignKey(
        "members.Member",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("closed by"),
    )
    closed_via = models.CharField(_("closed via"), max_length=8, choices=Via.choices, blank=True)
    close_note = models.TextField(_("what was done"), max_length=2000, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("fault report")
        verbose_name_plural = _("fault reports")
        indexes = [
            models.Index(fields=["machine"], condition=Q(closed_at__isnull=True), name="fault_open"),
            models.Index(fields=["created_at"], name="fault_created"),
        ]

    def __str__(self) -> str:
        return f"{self.machine}: {self.description[:40]}"

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    @property
    def locks(self) -> bool:
        return self.is_open and self.severity == self.Severity.OUT_OF_ORDER


class MachineCheck(models.Model):
    """A check after use that a type requires: open (``checked_at`` None) from the use's end until staff confirm."""

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="checks", verbose_name=_("machine"))
    use = models.OneToOneField(
        Use, on_delete=models.SET_NULL, null=True, blank=True, related_name="machine_check", verbose_name=_("use")
    )
    requested_at = models.DateTimeField(_("requested"))
    checked_at = models.DateTimeField(_("checked"), null=True, blank=True)
    checked_by = models.ForeignKey(
        "members.Member",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("checked by"),
    )
    checked_via = models.CharField(_("checked via"), max_length=8, choices=FaultReport.Via.choices, blank=True)

    class Meta:
        ordering = ["-requested_at"]
        verbose_name = _("check after use")
        verbose_name_plural = _("checks after use")
        indexes = [models.Index(fields=["machine"], condition=Q(checked_at__isnull=True), name="check_open")]

    def __str__(self) -> str:
        return f"{self.machine} @ {self.requested_at:%Y-%m-%d %H:%M}"


class KioskScreen(models.Model):
    """A read-only live status screen for the lab, opened by a secret address (no login on that screen)."""

    name = models.CharField(_("name"), max_length=100)
    # SHA-256 of the secret in the address: the address is shown once, when the screen is created.
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        "members.Member",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("created by"),
        editable=False,
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now, editable=False)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True, editable=False)
    last_seen_at = models.DateTimeField(_("last opened"), null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name = _("kiosk screen")
        verbose_name_plural = _("kiosk screens")

    def __str__(self) -> str:
        return self.name
