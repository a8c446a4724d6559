"""The training lifecycle as the portal and the reminder e-mails show it, on top of ``machines.safety``'s rules.

- :class:`Rule`: the expiry a staff member chose when granting (or the machine type's, by default).
- :func:`expiry_text` and :func:`status`: what an authorization's "expires" column and badge say.
- :func:`grant_many`: new authorizations for several members and machines, each through ``safety.grant``.
- :func:`send_reminders`: one e-mail per member whose trainings lapse soon, at most one a day (``manage.py
  send_training_reminders``, daily timer).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db.models import Q
from django.template.loader import render_to_string
from django.utils import formats, timezone, translation
from django.utils.translation import gettext as _

from members.models import Member

from . import safety
from .models import Authorization, Machine

logger = logging.getLogger(__name__)

Expiry = Authorization.Expiry
SOON_DAYS = 30  # "expiring soon" in the portal: badges, the list's filter
LANGUAGES = ("en", "it")


@dataclass(frozen=True)
class Rule:
    """How a new authorization expires: ``expiry`` None means the machine type's rule."""

    expiry: str | None = None
    days: int | None = None
    on_date: date | None = None

    def grant(self, member: Member, machine: Machine, *, by: Member | None) -> Authorization:
        return safety.grant(member, machine, by=by, expiry=self.expiry, days=self.days, on_date=self.on_date)


TYPE_RULE = Rule()


def last_valid_day(authorization: Authorization) -> date | None:
    """The last day the training holds, in the lab's time zone (``expires_at`` is the first moment it does not)."""
    if authorization.expires_at is None:
        return None
    return timezone.localtime(authorization.expires_at - timedelta(seconds=1)).date()


def expiry_text(authorization: Authorization) -> str:
    """ "never", "31/03/2027", or "after 90 days unused (on 31/03/2027)"."""
    day = last_valid_day(authorization)
    if day is None:
        return _("never")
    shown = formats.date_format(day, "SHORT_DATE_FORMAT")
    if authorization.expiry == Expiry.IDLE_DAYS:
        return _("after %(days)d days unused (on %(date)s)") % {"days": authorization.expiry_days or 0, "date": shown}
    return shown


def status(authorization: Authorization, now: datetime | None = None) -> str | None:
    """``"expired"``, ``"soon"`` (within :data:`SOON_DAYS`) or None."""
    if authorization.expires_at is None:
        return None
    now = now or timezone.now()
    if authorization.expires_at <= now:
        return "expired"
    if authorization.expires_at <= now + timedelta(days=SOON_DAYS):
        return "soon"
    return None


def grant_many(
    *, members: Sequence[Member], machines: Sequence[Machine], by: Member | None, rule: Rule = TYPE_RULE
) -> int:
    """Train every member on every machine; authorizations they already have are kept as they are (renewing is a
    separate, deliberate action), erased members get none. Returns how many were created."""
    members = [member for member in members if member.deleted_at is None]
    have = set(
        Authorization.objects.filter(member__in=members, machine__in=machines).values_list("member_id", "machine_id")
    )
    created = 0
    for member in members:
        for machine in machines:
            if (member.pk, machine.pk) not in have:
                rule.grant(member, machine, by=by)
                created += 1
    return created


# --- Reminder e-mails ---------------------------------------------------------------------------------------------


@dataclass
class ReminderResult:
    sent: int = 0
    failed: int = 0
    skipped: int = 0  # reminded today already
    members: list[int] = field(default_factory=list)


def reminder_days() -> int:
    return int(getattr(settings, "TRAINING_REMINDER_DAYS", 14))


def language_of(member: Member) -> str:
    language = (member.language or settings.LANGUAGE_CODE or "en")[:2]
    return language if language in LANGUAGES else "en"


def due_reminders(now: datetime | None = None) -> dict[Member, list[Authorization]]:
    """The members to remind (an e-mail, reminders on, not disabled or erased) and their trainings lapsing within
    ``TRAINING_REMINDER_DAYS``, soonest first."""
    lapsing = (
        safety.expiring_within(reminder_days(), now)
        .filter(
            member__training_reminders=True,
            member__is_active=True,
            member__disabled=False,
            member__deleted_at__isnull=True,
        )
        .exclude(Q(member__email__isnull=True) | Q(member__email=""))
        .select_related("member", "machine")
    )
    grouped: dict[Member, list[Authorization]] = {}
    for authorization in lapsing:
        grouped.setdefault(authorization.member, []).append(authorization)
    return grouped


def render_reminder(member: Member, authorizations: list[Authorization]) -> tuple[str, str]:
    """Subject and text of one member's reminder, in their language."""
    language = language_of(member)
    with translation.override(language), timezone.override(settings.TIME_ZONE):
        rows = [{"machine": a.machine.name, "expires": expiry_text(a)} for a in authorizations]
        context = {"member": member, "rows": rows, "lab": settings.PUBLIC_URL}
        subject = render_to_string(f"machines/training_reminder/subject_{language}.txt", context).strip()
        text = render_to_string(f"machines/training_reminder/body_{language}.txt", context)
    return subject, text


def send_reminders(now: datetime | None = None) -> ReminderResult:
    """One e-mail per member listing all their trainings that lapse soon; at most one per member per day, also when
    the command runs twice or on two hosts (the day is claimed with a conditional UPDATE before sending)."""
    now = now or timezone.now()
    today = timezone.localdate(now)
    result = ReminderResult()
    due = due_reminders(now)
    if not due:
        return result
    connection = get_connection(fail_silently=False)
    for member, authorizations in due.items():
        before = member.last_reminder_on
        claimed = (
            Member.objects.filter(pk=member.pk)
            .filter(Q(last_reminder_on__isnull=True) | Q(last_reminder_on__lt=today))
            .update(last_reminder_on=today)
        )
        if not claimed:
            result.skipped += 1
            continue
        subject, text = render_reminder(member, authorizations)
        assert member.email  # due_reminders() excludes members without an address
        try:
            connection.send_messages([EmailMessage(subject, text, settings.DEFAULT_FROM_EMAIL, [member.email])])
        except Exception:  # one bad address or a hiccup must not stop the others; tomorrow's run tries again
            logger.exception("Training reminder to member #%s failed", member.pk)
            Member.objects.filter(pk=member.pk, last_reminder_on=today).update(last_reminder_on=before)
            result.failed += 1
            continue
        result.sent += 1
        result.members.append(member.pk)
    logger.info("Training reminders: %s sent, %s failed, %s already reminded today", *_counts(result))
    return result


def _counts(result: ReminderResult) -> tuple[int, int, int]:
    return result.sent, result.failed, result.skipped
