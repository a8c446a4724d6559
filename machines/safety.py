"""The safety workflows' rules, shared by the bridge, the portal and the API (docs/protocol.md §9).

- Training lifecycle: an authorization lapses by its rule (``Authorization.Expiry``); ``expires_at`` always holds
  the moment it lapses, so the bridge decides with one comparison and lists filter with one condition.
- Trainers: staff grant only for the machines (or machine types) they train; portal administrators for all.
- Sign-off at the machine: a trainer arms a machine; the next card refused for want of a (valid) authorization on
  it within the time is trained by them, on that same swipe.
- Fault reports and checks after use lock a machine for everyone below the board's level 2 at the next login (a
  running session is never cut: the board asks only at login). The board learns of the lock from ``checkmachine``
  (``maintenance: true`` with the reason on the LCD); staff close it with the 10-second hold or in the portal.
- Every refused ``checkuser`` is kept with its reason.

Every function is O(1) in the length of the usage history.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone, translation
from django.utils.translation import gettext

from integrations import outbox
from members.models import Member

from .models import (
    Authorization,
    FaultReport,
    Machine,
    MachineCheck,
    MachineType,
    Refusal,
    TrainingArm,
    Use,
)

logger = logging.getLogger(__name__)

Reason = Refusal.Reason
Expiry = Authorization.Expiry

ARM_SECONDS = 60  # how long a sign-off waits for the trainee's card
REFUSAL_DEDUP_SECONDS = 5  # the same refusal again within this is a duplicate message, not a new swipe


# --- Training lifecycle ---------------------------------------------------------------------------


def end_of_day(day: date) -> datetime:
    """ "Expires on 31 March": valid all that day in the lab's time zone."""
    return timezone.make_aware(datetime.combine(day + timedelta(days=1), time.min))


def expires_at(
    expiry: str, *, days: int | None, on_date: date | None, trained_at: datetime, last_used_at: datetime | None
) -> datetime | None:
    """When an authorization with this rule lapses (``Authorization.expires_at``)."""
    if expiry == Expiry.AFTER_DAYS and days:
        return trained_at + timedelta(days=days)
    if expiry == Expiry.IDLE_DAYS and days:
        return max(trained_at, last_used_at or trained_at) + timedelta(days=days)
    if expiry == Expiry.ON_DATE and on_date:
        return end_of_day(on_date)
    return None


def type_rule(machine_type: MachineType) -> tuple[str, int | None]:
    """The rule new authorizations for machines of this type take: (expiry, days)."""
    if machine_type.training_expiry in (Expiry.AFTER_DAYS, Expiry.IDLE_DAYS) and machine_type.training_days:
        return machine_type.training_expiry, machine_type.training_days
    return Expiry.NEVER, None


def grant(
    member: Member,
    machine: Machine,
    *,
    by: Member | None,
    now: datetime | None = None,
    expiry: str | None = None,
    days: int | None = None,
    on_date: date | None = None,
) -> Authorization:
    """Train ``member`` on ``machine`` now (a new authorization, or the renewal of theirs), with the type's rule
    unless one is given. Does not check that ``by`` may train: callers do (:func:`may_train`)."""
    now = now or timezone.now()
    if expiry is None:
        expiry, days = type_rule(machine.type)
    fields = {
        "granted_at": now,
        "trained_by": by,
        "expiry": expiry,
        "expiry_days": days if expiry in (Expiry.AFTER_DAYS, Expiry.IDLE_DAYS) else None,
        "expires_at": expires_at(expiry, days=days, on_date=on_date, trained_at=now, last_used_at=None),
        "last_used_at": None,
    }
    authorization, _ = Authorization.objects.update_or_create(member=member, machine=machine, defaults=fields)
    return authorization


def renew(authorizations: QuerySet[Authorization], *, by: Member | None, now: datetime | None = None) -> int:
    """Training repeated now: each keeps its rule (a fixed date moves by the time it had left since its training)."""
    now = now or timezone.now()
    count = 0
    for authorization in authorizations.select_related("machine__type"):
        on_date = None
        if authorization.expiry == Expiry.ON_DATE and authorization.expires_at:
            # As many whole days as it had, counted in the lab's calendar (expires_at is the midnight after its day).
            span = timezone.localdate(authorization.expires_at - timedelta(microseconds=1)) - timezone.localdate(
                authorization.granted_at
            )
            on_date = timezone.localdate(now) + span
        grant(
            authorization.member,
            authorization.machine,
            by=by,
            now=now,
            expiry=authorization.expiry,
            days=authorization.expiry_days,
            on_date=on_date,
        )
        count += 1
    return count


def expiring_within(days: int, now: datetime | None = None) -> QuerySet[Authorization]:
    """Authorizations that lapse in the next ``days`` days (not yet lapsed), soonest first."""
    now = now or timezone.now()
    return Authorization.objects.filter(expires_at__gt=now, expires_at__lte=now + timedelta(days=days)).order_by(
        "expires_at"
    )


def expired(now: datetime | None = None) -> QuerySet[Authorization]:
    return Authorization.objects.filter(expires_at__lte=now or timezone.now())


def valid_condition(now: datetime, prefix: str = "") -> Q:
    """An authorization that has not lapsed, as a filter (``prefix``: the path to it, e.g. "authorizations__")."""
    return Q(**{f"{prefix}expires_at__isnull": True}) | Q(**{f"{prefix}expires_at__gt": now})


_STAMP_READ = """
    SELECT id, expiry, expiry_days, granted_at, last_used_at, expires_at FROM {table}
    WHERE member_id = %s AND machine_id = %s"""
_STAMP_WRITE = """
    UPDATE {table} SET last_used_at = %s, expires_at = %s
    WHERE id = %s AND (last_used_at IS NULL OR last_used_at < %s)"""


def stamp_use(member_id: int, machine_id: int, started_at: datetime) -> None:
    """A use opened: a training that lapses when unused counts again from it, unless it had lapsed already (a
    session the board let in offline must not revive it).

    One read of the member's (unique) authorization for the machine and one conditional UPDATE when it moves, in
    raw SQL: the bridge calls this on every use it opens, and the ORM's compilation would cost more than both."""
    table = Authorization._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(_STAMP_READ.format(table=table), [member_id, machine_id])
        found = cursor.fetchone()
    if found is None:
        return
    pk, expiry, days, granted_at, last_used_at, lapses_at = found
    lapses_at, last_used_at = _from_db(lapses_at), _from_db(last_used_at)
    if lapses_at is not None and lapses_at <= started_at:
        return  # it had lapsed when this use started: not revived
    if last_used_at is not None and last_used_at >= started_at:
        return  # a replay of something older than what we know
    if expiry == Expiry.IDLE_DAYS:
        lapses_at = expires_at(
            Expiry.IDLE_DAYS,
            days=days,
            on_date=None,
            trained_at=_from_db(granted_at) or started_at,
            last_used_at=started_at,
        )
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:  # conditional: a later use stamped meanwhile is never moved back
        cursor.execute(_STAMP_WRITE.format(table=table), [adapt(started_at), adapt(lapses_at), pk, adapt(started_at)])


def _from_db(value: datetime | str | None) -> datetime | None:
    """A datetime column read by a raw query (SQLite returns UTC text), as an aware datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value is not None and timezone.is_naive(value):
        value = value.replace(tzinfo=UTC)
    return value


# --- Trainers -------------------------------------------------------------------------------------


def is_portal_admin(member: Member) -> bool:
    return bool(member.is_superuser or (member.role_id and member.role.backend_admin))


def may_train(member: Member, machine: Machine) -> bool:
    """Portal administrators train on every machine; other staff only where they are trainers."""
    if not member.can_use_machines:
        return False
    if is_portal_admin(member):
        return True
    return machine.trainers.filter(pk=member.pk).exists() or machine.type.trainers.filter(pk=member.pk).exists()


def trainable_machines(member: Member) -> QuerySet[Machine]:
    """The machines ``member`` may grant authorizations for."""
    if not member.can_use_machines:
        return Machine.objects.none()
    if is_portal_admin(member):
        return Machine.objects.all()
    return Machine.objects.filter(Q(trainers=member) | Q(type__trainers=member)).distinct()


# --- Sign-off at the machine ----------------------------------------------------------------------


def arm(machine: Machine, trainer: Member, *, seconds: int = ARM_SECONDS, now: datetime | None = None) -> TrainingArm:
    """The next card without a valid authorization on ``machine`` within ``seconds`` is trained by ``trainer``.

    Replaces an earlier arming of the machine. Raises PermissionError when ``trainer`` may not train on it."""
    if not may_train(trainer, machine):
        raise PermissionError(f"{trainer} is not a trainer of {machine}")
    now = now or timezone.now()
    with transaction.atomic():
        TrainingArm.objects.filter(machine=machine, used_at__isnull=True, expires_at__gt=now).update(expires_at=now)
        return TrainingArm.objects.create(
            machine=machine, trainer=trainer, armed_at=now, expires_at=now + timedelta(seconds=seconds)
        )


def disarm(machine: Machine, now: datetime | None = None) -> int:
    now = now or timezone.now()
    return TrainingArm.objects.filter(machine=machine, used_at__isnull=True, expires_at__gt=now).update(expires_at=now)


def active_arm(machine_id: int, now: datetime | None = None) -> TrainingArm | None:
    now = now or timezone.now()
    return (
        TrainingArm.objects.filter(machine_id=machine_id, used_at__isnull=True, expires_at__gt=now)
        .select_related("trainer__role")
        .order_by("-expires_at")
        .first()
    )


def sign_off(machine: Machine, member: Member, now: datetime | None = None) -> Authorization | None:
    """The swipe of ``member`` (refused for want of a valid authorization) consumes the machine's arming, if any:
    the authorization is granted with the arming's trainer. At most one card per arming, across bridges (the
    arming is taken by a conditional UPDATE)."""
    now = now or timezone.now()
    found = active_arm(machine.pk, now)
    if found is not None:
        machine = Machine.objects.select_related("type").get(pk=machine.pk)  # the type's training rule
    if found is None or found.trainer_id == member.pk or not may_train(found.trainer, machine):
        return None
    with transaction.atomic():
        taken = TrainingArm.objects.filter(pk=found.pk, used_at__isnull=True, expires_at__gt=now).update(
            used_at=now, trainee=member
        )
        if not taken:
            return None
        return grant(member, machine, by=found.trainer, now=now)


# --- Locks: fault reports and checks after use ----------------------------------------------------


def report_source(address: str) -> str:
    """A keyed hash of a reporter's address: enough to rate-limit, useless to identify anyone."""
    return hmac.new(settings.SECRET_KEY.encode(), address.encode(), hashlib.sha256).hexdigest()


def report_fault(
    machine: Machine,
    *,
    severity: str,
    description: str,
    reporter: str = "",
    source: str = "",
    now: datetime | None = None,
) -> FaultReport:
    fault = FaultReport.objects.create(
        machine=machine,
        severity=severity,
        description=description.strip(),
        reporter=reporter.strip(),
        source=source,
        created_at=now or timezone.now(),
    )
    outbox.fault_reported(fault)
    return fault


def close_faults(
    machine: Machine,
    *,
    by: Member | None,
    via: str,
    note: str = "",
    faults: QuerySet[FaultReport] | None = None,
    now: datetime | None = None,
) -> int:
    """Close the machine's open fault reports (or those given). Returns how many were closed."""
    qs = (faults if faults is not None else FaultReport.objects.all()).filter(machine=machine, closed_at__isnull=True)
    return qs.update(closed_at=now or timezone.now(), closed_by=by, closed_via=via, close_note=note)


def require_check(use: Use, *, wanted: bool | None = None) -> MachineCheck | None:
    """A use on a machine whose type wants a check after use has closed: open a check, once per use.

    ``wanted``: the type's ``check_after_use`` when the caller already read it (the bridge), else read here.
    A replayed session that ended before the machine's latest confirmed check needs none: it was checked."""
    if use.ended_at is None:
        return None
    if wanted is None:
        wanted = Machine.objects.filter(pk=use.machine_id, type__check_after_use=True).exists()
    if not wanted:
        return None
    last = (
        MachineCheck.objects.filter(machine_id=use.machine_id, checked_at__isnull=False)
        .order_by("-checked_at")
        .values_list("checked_at", flat=True)
        .first()
    )
    if last is not None and use.ended_at <= last:
        return None
    try:
        with transaction.atomic():
            check, created = MachineCheck.objects.get_or_create(
                use=use, defaults={"machine_id": use.machine_id, "requested_at": use.ended_at}
            )
    except IntegrityError:  # another bridge recorded it meanwhile
        return MachineCheck.objects.filter(use=use).first()
    if created:
        outbox.check_required(check)
    return check


def confirm_check(machine: Machine, *, by: Member | None, via: str, now: datetime | None = None) -> int:
    """The machine was checked: every open check of it is closed. Returns how many."""
    return MachineCheck.objects.filter(machine=machine, checked_at__isnull=True).update(
        checked_at=now or timezone.now(), checked_by=by, checked_via=via
    )


def lock_reason(machine_id: int) -> str | None:
    """Why only staff may log in (``Reason.FAULT`` or ``Reason.TO_CHECK``), or None. Two indexed probes."""
    if FaultReport.objects.filter(
        machine_id=machine_id, closed_at__isnull=True, severity=FaultReport.Severity.OUT_OF_ORDER
    ).exists():
        return Reason.FAULT
    if MachineCheck.objects.filter(machine_id=machine_id, checked_at__isnull=True).exists():
        return Reason.TO_CHECK
    return None


def lock_message(reason: str) -> str:
    """The LCD's second row for a lock (16 characters), in the lab's language."""
    with translation.override(settings.LANGUAGE_CODE):
        # Translators: shown on the machine's 16-character display; keep it within 16 characters.
        text = gettext("Out of order") if reason == Reason.FAULT else gettext("To check")
    return text[:16]


def close_locks_at_machine(machine: Machine, member: Member, *, replay: bool, now: datetime | None = None) -> bool:
    """The 10-second hold of a level-2 card: closes the machine's fault reports and checks. Not on a replay: the hold
    happened at an unknown time, perhaps before the report. Returns whether anything was closed."""
    if replay:
        return False
    now = now or timezone.now()
    closed = close_faults(machine, by=member, via=FaultReport.Via.MACHINE, now=now)
    closed += confirm_check(machine, by=member, via=FaultReport.Via.MACHINE, now=now)
    return bool(closed)


# --- Refusals -------------------------------------------------------------------------------------


def record_refusal(
    machine_id: int, reason: str, *, member_id: int | None = None, uid: str = "", now: datetime | None = None
) -> bool:
    """Keep a refused ``checkuser``; the same one again within a few seconds is the board's duplicate, not a new
    swipe. Returns whether a row was written."""
    now = now or timezone.now()
    recent = Refusal.objects.filter(
        Q(member__isnull=True) if member_id is None else Q(member_id=member_id),
        machine_id=machine_id,
        uid=uid,
        reason=reason,
        at__gt=now - timedelta(seconds=REFUSAL_DEDUP_SECONDS),
    )
    if recent.exists():
        return False
    Refusal.objects.create(machine_id=machine_id, member_id=member_id, uid=uid, reason=reason, at=now)
    return True
