"""The webhooks' outbox: what the portal and the bridge call when something happens, in the change's transaction.

:func:`emit` inserts one :class:`~integrations.models.Event` row, and only when an active subscription wants that
event (the set of wanted events is cached for :data:`WANTED_TTL` seconds per process): no HTTP, no fan-out, nothing
that can wait on a receiver. The delivery worker (``manage.py deliver_webhooks``, :mod:`integrations.delivery`)
does the rest. The helpers below shape each event's data: ids, names, first names and times, never e-mails.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

from django.db.models.signals import post_delete, post_save

from .models import Event, EventType, Subscription

WANTED_TTL = 5.0

_lock = threading.Lock()
_wanted: tuple[float, frozenset[str]] = (-WANTED_TTL, frozenset())


def wanted() -> frozenset[str]:
    """The events at least one active subscription wants (one small query every few seconds at most)."""
    global _wanted
    now = time.monotonic()
    expires, events = _wanted
    if now - expires < WANTED_TTL:
        return events
    with _lock:
        fresh: set[str] = set()
        for chosen in Subscription.objects.filter(active=True).values_list("events", flat=True):
            fresh.update(e for e in chosen if isinstance(e, str))
        _wanted = (now, frozenset(fresh))
    return _wanted[1]


def forget_wanted(**_: Any) -> None:
    """Read the subscriptions again at the next event (a subscription changed in this process)."""
    global _wanted
    _wanted = (-WANTED_TTL, frozenset())


post_save.connect(forget_wanted, sender=Subscription, dispatch_uid="webhooks-wanted-save")
post_delete.connect(forget_wanted, sender=Subscription, dispatch_uid="webhooks-wanted-delete")


def is_wanted(event: str) -> bool:
    return event in wanted()


def emit(event: str, data: dict[str, Any], *, key: str | None = None, at: datetime | None = None) -> bool:
    """Record ``event`` in the outbox when it is wanted; ``key``: an event that happens once (a second emit with the
    same key records nothing). Returns whether a row may have been written."""
    if event not in wanted():
        return False
    row = Event(type=event, data=data, key=key)
    if at is not None:
        row.created_at = at
    if key is None:
        row.save()
    else:
        Event.objects.bulk_create([row], ignore_conflicts=True)
    return True


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def machine_ref(machine_id: int, name: str | None = None) -> dict[str, Any]:
    if name is None:
        from machines.models import Machine

        name = Machine.objects.filter(pk=machine_id).values_list("name", flat=True).first() or ""
    return {"id": machine_id, "name": name}


# --- The events, as the services report them -------------------------------------------------------------


def use_started(use: Any) -> None:
    if not is_wanted(EventType.USE_STARTED):
        return
    emit(EventType.USE_STARTED, {**_use_data(use)})


def use_ended(use: Any) -> None:
    if not is_wanted(EventType.USE_ENDED):
        return
    data = _use_data(use)
    data.update(ended_at=iso(use.ended_at), duration=use.duration, flagged=bool(use.flag))
    emit(EventType.USE_ENDED, data)


def _use_data(use: Any) -> dict[str, Any]:
    from members.models import Member

    first_name = Member.objects.filter(pk=use.member_id).values_list("first_name", flat=True).first() or ""
    return {
        "use": use.pk,
        "machine": machine_ref(use.machine_id),
        "member": {"id": use.member_id, "first_name": first_name},
        "started_at": iso(use.started_at),
        "replay": bool(use.replay),
    }


def machines_blocked(machines: list[Any], blocked: bool) -> None:
    event = EventType.MACHINE_BLOCKED if blocked else EventType.MACHINE_UNBLOCKED
    for machine in machines:
        emit(event, {"machine": machine_ref(machine.pk, machine.name)})


def fault_reported(fault: Any) -> None:
    if not is_wanted(EventType.FAULT_REPORTED):
        return
    data = {
        "fault": fault.pk,
        "machine": machine_ref(fault.machine_id),
        "severity": fault.severity,
        "description": fault.description,
        "created_at": iso(fault.created_at),
    }
    emit(EventType.FAULT_REPORTED, data)


def check_required(check: Any) -> None:
    if not is_wanted(EventType.CHECK_REQUIRED):
        return
    data = {
        "check": check.pk,
        "machine": machine_ref(check.machine_id),
        "use": check.use_id,
        "requested_at": iso(check.requested_at),
    }
    emit(EventType.CHECK_REQUIRED, data, key=f"check:{check.pk}")


def maintenance_due(machine_id: int) -> None:
    """After the meter moved: every plan item of the machine now due, once per item and interval."""
    if not is_wanted(EventType.MAINTENANCE_DUE):
        return
    from machines.models import Machine

    machine = Machine.objects.filter(pk=machine_id).only("name", "hours").first()
    if machine is None:
        return
    for plan in machine.plans.all():
        if plan.is_due(machine.hours):
            data = {
                "machine": machine_ref(machine.pk, machine.name),
                "plan": {"id": plan.pk, "description": plan.description, "hours_between": plan.hours_between},
                "hours": round(machine.hours, 3),
            }
            emit(EventType.MAINTENANCE_DUE, data, key=f"maintenance:{plan.pk}:{plan.done_at_hours!r}")


def unknown_card(uid: str, machine_id: int, now: datetime) -> None:
    """At most one event per card and machine a minute: a board swiping in a loop floods nobody."""
    if not is_wanted(EventType.UNKNOWN_CARD):
        return
    data = {"uid": uid, "machine": machine_ref(machine_id), "seen_at": iso(now)}
    emit(EventType.UNKNOWN_CARD, data, key=f"card:{machine_id}:{uid}:{now:%Y%m%d%H%M}")


def authorizations_expiring(days: int, now: datetime | None = None) -> int:
    """The authorizations lapsing within ``days`` days, one event per authorization and expiry date (the worker
    calls it every few minutes). Returns how many were considered."""
    if not is_wanted(EventType.AUTHORIZATION_EXPIRING):
        return 0
    from machines import safety

    expiring = safety.expiring_within(days, now).select_related("member", "machine")
    count = 0
    for auth in expiring.iterator():
        data = {
            "authorization": auth.pk,
            "machine": machine_ref(auth.machine_id, auth.machine.name),
            "member": {"id": auth.member_id, "first_name": auth.member.first_name},
            "expires_at": iso(auth.expires_at),
        }
        emit(EventType.AUTHORIZATION_EXPIRING, data, key=f"expiring:{auth.pk}:{iso(auth.expires_at)}")
        count += 1
    return count


def forget_member(member_id: int, uids: list[str]) -> int:
    """Erasure: the events that name the member (their first name) or one of their cards go, with their deliveries.
    Returns how many events were deleted."""
    from django.db.models import Q

    deleted, _ = Event.objects.filter(Q(data__member__id=member_id) | Q(data__uid__in=uids)).delete()
    return deleted
