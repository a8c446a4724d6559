"""Members, their roles and their RFID cards."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

# The roles a new installation starts with (members/setup.py). The code refers to them only by these names.
ADMIN_ROLE = "admins"  # authorizes all, maintenance, portal administration
STAFF_ROLE = "Fab Staff"  # maintenance
DEFAULT_ROLE = "Fab Users"  # a new member's role unless another is chosen
ANONYMOUS_ROLE = "Anonymous"  # reserved: the placeholder member that anonymised history points to

# A card UID as stored and as boards send it (docs/protocol.md §1.3): 8 lower-case hex digits, or 14, the full form of
# a 7-byte UID that cards may be registered with. The one definition: telemetry/protocol.py parses board UIDs with it.
CARD_UID_RE = re.compile(r"^[0-9a-f]{8}([0-9a-f]{6})?$")


def normalize_uid(value: str) -> str:
    """Return a card UID in its stored form: lower-case hex, no separators or spaces."""
    return re.sub(r"[\s:\-]", "", str(value or "")).lower()


def validate_uid(value: str) -> None:
    if not CARD_UID_RE.match(normalize_uid(value)):
        raise ValidationError(
            _("A card UID is 8 hexadecimal characters, as the board shows it (e.g. aabbccd1)."),
            code="invalid_uid",
        )


class Role(models.Model):
    name = models.CharField(_("name"), max_length=100, unique=True)
    authorize_all = models.BooleanField(
        _("authorize all"),
        default=False,
        help_text=_(
            "Every machine, blocked ones included, without authorizations. Level 2 on boards only with maintenance."
        ),
    )
    maintenance = models.BooleanField(
        _("maintenance"), default=False, help_text=_("May record maintenance interventions.")
    )
    reserved = models.BooleanField(
        _("reserved"), default=False, editable=False, help_text=_("System role: cannot be edited or deleted.")
    )
    backend_admin = models.BooleanField(
        _("portal administrator"), default=False, help_text=_("Members with this role may manage the portal.")
    )
    legacy_id = models.PositiveIntegerField(null=True, blank=True, unique=True, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name = _("role")
        verbose_name_plural = _("roles")

    def __str__(self) -> str:
        return self.name

    @property
    def is_staff_level(self) -> bool:
        """The board's level 2 ("Fab staff"): may record maintenance and pass the "maintenance needed" lock.

        Only roles that may record maintenance get it: authorize all opens every machine, not the lock.
        """
        return self.maintenance

    @property
    def grants_nothing(self) -> bool:
        """A role that grants no more than the member's own authorizations (least privilege)."""
        return not (self.authorize_all or self.maintenance or self.backend_admin or self.reserved)

    def grants(self) -> str:
        """What the role grants, in words, for every place a role is chosen."""
        parts = []
        if self.authorize_all:
            parts.append(str(_("⚠ EVERY machine, blocked ones too")))
        else:
            parts.append(str(_("authorized machines only")))
        if self.maintenance:
            parts.append(str(_("maintenance (level 2 on boards)")))
        if self.backend_admin:
            parts.append(str(_("portal administration")))
        return ", ".join(parts)

    def choice_label(self) -> str:
        return f"{self.name} — {self.grants()}"


def default_role() -> Role | None:
    """The role a new member's form preselects: DEFAULT_ROLE, only while it grants nothing beyond authorizations."""
    role = Role.objects.filter(name=DEFAULT_ROLE).first()
    return role if role is not None and role.grants_nothing else None


class MemberManager(BaseUserManager["Member"]):
    use_in_migrations = True

    def _create(self, email: str | None, password: str | None, **extra: object) -> Member:
        email = self.normalize_email(email) if email else None
        if "role" not in extra and "role_id" not in extra:
            extra["role"] = Role.objects.get_or_create(name=DEFAULT_ROLE)[0]
        member = self.model(email=email, **extra)
        if password:
            member.set_password(password)
        else:
            member.set_unusable_password()
        member.save(using=self._db)
        return member

    def create_user(self, email: str | None = None, password: str | None = None, **extra: object) -> Member:
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra: object) -> Member:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        if "role" not in extra and "role_id" not in extra:
            extra["role"] = Role.objects.get_or_create(
                name=ADMIN_ROLE, defaults={"authorize_all": True, "maintenance": True, "backend_admin": True}
            )[0]
        return self._create(email, password, **extra)

    def anonymous(self) -> Member:
        """The placeholder member that anonymised history points to (created on demand)."""
        role, _created = Role.objects.get_or_create(name=ANONYMOUS_ROLE, defaults={"reserved": True})
        member = self.filter(role=role).order_by("pk").first()
        if member is None:
            member = self.create_user(first_name="Anonymous", last_name="", role=role, is_active=False)
        return member


class Member(AbstractBaseUser, PermissionsMixin):
    """One person: a card holder, and, with ``is_staff``, a portal user."""

    email = models.EmailField(_("e-mail"), unique=True, null=True, blank=True)
    first_name = models.CharField(_("name"), max_length=150)
    last_name = models.CharField(_("surname"), max_length=150, blank=True)
    role = models.ForeignKey(Role, on_delete=models.PROTECT, related_name="members", verbose_name=_("role"))
    disabled = models.BooleanField(
        _("disabled"), default=False, help_text=_("A disabled member is refused on every machine.")
    )
    receive_weekly_summary = models.BooleanField(_("weekly summary"), default=False)
    # Opt-out: a member is told before a training of theirs expires unless they say no.
    training_reminders = models.BooleanField(
        _("training reminders"),
        default=True,
        help_text=_("E-mail before an authorization expires (at most one a day)."),
    )
    last_reminder_on = models.DateField(_("last reminder"), null=True, blank=True, editable=False)
    language = models.CharField(
        _("language"),
        max_length=8,
        choices=settings.LANGUAGES,
        blank=True,
        help_text=_("Of the e-mails the member receives. Empty: the lab's language."),
    )
    is_staff = models.BooleanField(_("portal access"), default=False)
    is_active = models.BooleanField(_("active"), default=True)
    date_joined = models.DateTimeField(_("joined"), default=timezone.now)
    deleted_at = models.DateTimeField(
        _("deleted"), null=True, blank=True, help_text=_("Set when erasure was requested; purged after retention.")
    )
    legacy_id = models.PositiveIntegerField(null=True, blank=True, unique=True, editable=False)

    objects = MemberManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS = ["first_name"]

    class Meta:
        ordering = ["first_name", "last_name"]
        verbose_name = _("member")
        verbose_name_plural = _("members")

    def __str__(self) -> str:
        return self.get_full_name() or self.email or f"#{self.pk}"

    def clean(self) -> None:
        super().clean()
        if self.email == "":
            self.email = None
        if self.receive_weekly_summary and not self.email:
            raise ValidationError({"receive_weekly_summary": _("The weekly summary needs an e-mail address.")})
        if self.is_staff and not self.email:
            raise ValidationError({"email": _("Portal users log in with their e-mail address.")})

    def get_full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    def get_short_name(self) -> str:
        return self.first_name

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def can_use_machines(self) -> bool:
        return not self.disabled and self.deleted_at is None and self.is_active

    @property
    def active_card(self) -> Card | None:
        return self.cards.filter(active=True).order_by("-created_at").first()


class Card(models.Model):
    uid = models.CharField(_("card UID"), max_length=14, unique=True, validators=[validate_uid])
    member = models.ForeignKey(Member, on_delete=models.CASCADE, related_name="cards", verbose_name=_("member"))
    active = models.BooleanField(_("active"), default=True, help_text=_("Untick for a lost or returned card."))
    created_at = models.DateTimeField(_("issued"), default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("card")
        verbose_name_plural = _("cards")

    def __str__(self) -> str:
        return self.uid

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.uid = normalize_uid(self.uid)
        super().save(*args, **kwargs)


class UnknownCard(models.Model):
    """A card swiped on a board that matched no member: a candidate for registration.

    One row per card and machine, however often it is swiped (a board can send hundreds a second): the number
    of swipes, the first and the latest.
    """

    uid = models.CharField(_("card UID"), max_length=14, db_index=True)
    machine = models.ForeignKey(
        "machines.Machine", on_delete=models.CASCADE, related_name="unknown_cards", verbose_name=_("machine")
    )
    seen_at = models.DateTimeField(_("last seen"), default=timezone.now, db_index=True)  # newest-first list, purge
    first_seen = models.DateTimeField(_("first seen"), default=timezone.now)
    count = models.PositiveIntegerField(_("swipes"), default=1)
    legacy_id = models.PositiveIntegerField(null=True, blank=True, unique=True, editable=False)

    class Meta:
        ordering = ["-seen_at"]
        verbose_name = _("unknown card")
        verbose_name_plural = _("unknown cards")
        constraints = [models.UniqueConstraint(fields=["uid", "machine"], name="one_unknown_card_row_per_machine")]

    def __str__(self) -> str:
        return self.uid
