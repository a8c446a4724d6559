"""Retention and anonymisation: the GDPR rules of the lab.

* History (uses and interventions) older than ``RETENTION_DAYS`` moves to the anonymous member: machine hours
  and the maintenance history stay intact, only the link to the person goes.
* Unrecognised card swipes older than ``UNKNOWN_CARD_RETENTION_DAYS`` are deleted, refused swipes older than
  ``REFUSAL_RETENTION_DAYS``, closed fault reports and confirmed checks after use older than ``RETENTION_DAYS``.
* Members soft-deleted (``deleted_at``) longer ago than ``RETENTION_DAYS`` are erased.
* Erasure on request (deleting a member in the portal) anonymises everything about the person at once.
* The admin's history (``django_admin_log``) names people, their cards and authorizations ("Added card
  “c0ffee42”", "Zoe Privacyson → LASER 1", a use's title): erasure rewrites every entry that mentions the
  member, and the purge deletes entries older than ``RETENTION_DAYS`` and renames those of anonymised uses.
  ``tests/test_gdpr.py`` searches every table of the database after an erasure: an audit trail added later that
  keeps a name fails it until it is covered here.
* The audit trail (django-auditlog, ``operations/audit.py``): erasure redacts the member's name, e-mail and cards
  in it ("erased member #<id>"), keeping who did what; the purge deletes entries older than
  ``AUDIT_RETENTION_DAYS``.

Everything here is idempotent: running it twice changes nothing the second time.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypedDict

from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import CharField, Exists, Max, Min, Model, OuterRef, Q, QuerySet
from django.db.models.functions import Cast
from django.utils import timezone
from django.utils.translation import gettext_noop

from integrations import outbox
from machines.models import Authorization, FaultReport, Intervention, MachineCheck, Refusal, Use
from operations import audit

from .models import Card, Member, UnknownCard

logger = logging.getLogger(__name__)

ERASED_NAME = "Erased"
BATCH_SIZE = 20_000

# on_progress(step, done, total): called after every batch, e.g. to drive a progress bar.
Progress = Callable[[str, int, int], None]


@dataclass
class PurgeResult:
    dry_run: bool = False
    uses: int = 0
    interventions: int = 0
    unknown_cards: int = 0
    members: int = 0
    login_records: int = 0
    admin_history: int = 0
    audit_entries: int = 0
    refusals: int = 0
    fault_reports: int = 0
    checks: int = 0
    cutoffs: dict[str, datetime] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return (
            self.uses
            + self.interventions
            + self.unknown_cards
            + self.members
            + self.login_records
            + self.admin_history
            + self.audit_entries
            + self.refusals
            + self.fault_reports
            + self.checks
        )

    def summary(self) -> str:
        verb = "Would purge" if self.dry_run else "Purged"
        return (
            f"{verb}: {self.uses} uses and {self.interventions} interventions anonymised, "
            f"{self.unknown_cards} unknown cards deleted, {self.members} members erased, "
            f"{self.login_records} login records, {self.admin_history} admin history entries and "
            f"{self.audit_entries} audit entries, {self.refusals} refusals, {self.fault_reports} closed fault reports "
            f"and {self.checks} confirmed checks deleted."
        )


class _BatchOptions(TypedDict):
    """The keyword arguments of :func:`_batched` that every step of :func:`purge` shares."""

    dry_run: bool
    batch_size: int
    on_progress: Progress | None


def _axes_models() -> list[type[Model]]:
    from axes.models import AccessAttempt, AccessFailureLog, AccessLog

    return [AccessAttempt, AccessFailureLog, AccessLog]


def _delete_rows_of(model: type[Model]) -> Callable[[QuerySet], int]:
    """A :func:`_batched` step that deletes the batch and counts the rows of ``model`` deleted."""
    return lambda qs: qs.delete()[1].get(model._meta.label, 0)


def _ids_as_text(qs: QuerySet) -> QuerySet:
    """Primary keys as LogEntry stores them (``object_id`` is text)."""
    return qs.annotate(pk_text=Cast("pk", CharField())).values("pk_text")


def _scrub(value: Any, patterns: list[re.Pattern[str]]) -> Any:
    if isinstance(value, str):
        for pattern in patterns:
            value = pattern.sub(ERASED_NAME, value)
        return value
    if isinstance(value, list):
        return [_scrub(v, patterns) for v in value]
    if isinstance(value, dict):  # a portal message's msgid holds no personal data and must stay a msgid
        keep = "message" if isinstance(value.get("params"), dict) else None
        return {k: v if k == keep else _scrub(v, patterns) for k, v in value.items()}
    return value


def _scrub_admin_history(member: Member, identifiers: Iterable[str]) -> int:
    """Rewrite every admin history entry about the member, or naming them, their e-mail or cards. Returns how many.

    Entries about the member's own record and their cards, authorizations and uses are found by object; entries that
    outlived their object (a card deleted earlier) by text, in their title and in the change message (JSON, where
    Django writes non-ASCII letters as \\u escapes, so both spellings are searched).
    """
    texts = {t for t in identifiers if t and len(t) >= 3}
    # Objects added or deleted through the member's page are named in its entries' messages ("Added card “…”").
    own = LogEntry.objects.filter(content_type=ContentType.objects.get_for_model(Member), object_id=str(member.pk))
    for message in own.values_list("change_message", flat=True):
        try:
            for change in json.loads(message or "[]"):
                for detail in change.values():
                    if isinstance(detail, dict) and detail.get("object"):
                        texts.add(str(detail["object"]))
        except (ValueError, AttributeError):
            continue
    by_object = Q(pk__in=own.values("pk"))
    for model, qs in (
        (Card, Card.objects.filter(member=member)),
        (Authorization, Authorization.objects.filter(member=member)),
        (Use, Use.objects.filter(member=member)),
        (Intervention, Intervention.objects.filter(member=member)),
    ):
        by_object |= Q(content_type=ContentType.objects.get_for_model(model), object_id__in=_ids_as_text(qs))
    by_text = Q()
    for text in texts:
        escaped = json.dumps(text)[1:-1]
        by_text |= Q(object_repr__icontains=text) | Q(change_message__icontains=text)
        by_text |= Q(change_message__icontains=escaped)
    patterns = [re.compile(re.escape(t), re.IGNORECASE) for t in sorted(texts, key=len, reverse=True)]
    entries = list(LogEntry.objects.filter(by_object | by_text) if texts else LogEntry.objects.filter(by_object))
    own_ids = set(own.values_list("pk", flat=True))
    for entry in entries:
        entry.object_repr = ERASED_NAME if entry.pk in own_ids else _scrub(entry.object_repr, patterns)
        try:
            entry.change_message = json.dumps(_scrub(json.loads(entry.change_message or "[]"), patterns))
        except ValueError:  # a plain-text message (older Django)
            entry.change_message = _scrub(entry.change_message, patterns)
    LogEntry.objects.bulk_update(entries, ["object_repr", "change_message"], batch_size=500)
    return len(entries)


def erase_member(member: Member, *, now: datetime | None = None) -> None:
    """Erase a person at once (right to erasure).

    Their uses and interventions move to the anonymous member (hours and maintenance history stay), their cards
    and authorizations go, name and e-mail are blanked and they can no longer log in. The row itself stays as a
    tombstone (``deleted_at`` set) so that the admin's own history (LogEntry) is not cascaded away.
    """
    anonymous = Member.objects.anonymous()
    if member.pk == anonymous.pk:
        raise ValueError("The anonymous member cannot be erased.")
    now = now or timezone.now()
    email = member.email
    identifiers = [member.get_full_name(), email or "", *member.cards.values_list("uid", flat=True)]
    with transaction.atomic(), audit.paused():
        # First, while the cards, authorizations and uses still point to the member.
        _scrub_admin_history(member, identifiers)
        audit.scrub_member(
            member,
            identifiers,
            [
                (Card, Card.objects.filter(member=member)),
                (Authorization, Authorization.objects.filter(member=member)),
                (Use, Use.objects.filter(member=member)),
                (Intervention, Intervention.objects.filter(member=member)),
            ],
            named_by=[Card],
        )
        Use.objects.filter(member=member).update(member=anonymous)
        Intervention.objects.filter(member=member).update(member=anonymous)
        Authorization.objects.filter(member=member).delete()
        Refusal.objects.filter(member=member).delete()  # their refused swipes name them and their card
        # Reports they filed from the portal carry their name (machines/fault_admin.py).
        FaultReport.objects.filter(reporter__in=[i for i in identifiers[:2] if i]).update(reporter="")
        # Webhook events (first name, card UIDs) waiting or logged (integrations/outbox.py).
        outbox.forget_member(member.pk, list(member.cards.values_list("uid", flat=True)))
        Card.objects.filter(member=member).delete()
        member.first_name = ERASED_NAME
        member.last_name = ""
        member.email = None
        member.legacy_id = None
        member.disabled = True
        member.is_active = False
        member.is_staff = False
        member.is_superuser = False
        member.receive_weekly_summary = False
        member.deleted_at = member.deleted_at or now
        # A new unusable hash also invalidates open sessions and pending password-reset links.
        member.set_unusable_password()
        member.save()
        member.groups.clear()
        member.user_permissions.clear()
        if email:
            for model in _axes_models():
                model._default_manager.filter(username__iexact=email).delete()
    # One entry without personal data: the deletions and the blanking above are not recorded field by field.
    audit.record(member, message=gettext_noop("Erased (GDPR right to erasure)"), title=audit.erased_label(member))
    logger.info("Erased member #%s", member.pk)


def _needs_erasure() -> Q:
    """Soft-deleted members whose personal data is still there (the purge erases them)."""
    return (
        Q(email__isnull=False)
        | ~Q(first_name=ERASED_NAME)
        | ~Q(last_name="")
        | Exists(Card.objects.filter(member=OuterRef("pk")))
        | Exists(Authorization.objects.filter(member=OuterRef("pk")))
        | Exists(Use.objects.filter(member=OuterRef("pk")))
        | Exists(Intervention.objects.filter(member=OuterRef("pk")))
        | Q(Exists(Refusal.objects.filter(member=OuterRef("pk"))))
    )


def _batched(
    qs: QuerySet,
    apply: Callable[[QuerySet], int],
    *,
    step: str,
    dry_run: bool,
    batch_size: int,
    on_progress: Progress | None,
) -> int:
    """Apply ``apply`` (an UPDATE or DELETE) to ``qs`` in primary-key ranges of ``batch_size``.

    Each range is its own short transaction, so the bridge keeps writing meanwhile, and memory stays flat:
    no id list is ever loaded. Returns the number of rows changed (or that would change).
    """
    total = qs.count()
    if dry_run or total == 0:
        if on_progress:
            on_progress(step, total, total)
        return total
    bounds = qs.aggregate(lo=Min("pk"), hi=Max("pk"))
    lo, hi = bounds["lo"], bounds["hi"]
    done = 0
    start = lo
    while start <= hi:
        end = start + batch_size
        with transaction.atomic():
            done += apply(qs.filter(pk__gte=start, pk__lt=end))
        start = end
        if on_progress:
            on_progress(step, min(done, total), total)
    return done


def _rename_anonymised_uses(anonymous: Member) -> None:
    """Entries about uses now owned by the anonymous member take the use's new title ("Anonymous on …").

    Only uses edited in the portal have entries, so this reads those few, never the history.
    """
    entries = list(
        LogEntry.objects.filter(content_type=ContentType.objects.get_for_model(Use)).exclude(
            object_repr__startswith=f"{anonymous} "
        )
    )
    ids = [int(e.object_id) for e in entries if e.object_id and e.object_id.isdigit()]
    uses = {str(u.pk): u for u in Use.objects.filter(pk__in=ids, member=anonymous).select_related("member", "machine")}
    changed = []
    for entry in entries:
        if entry.object_id in uses:
            entry.object_repr = str(uses[entry.object_id])[:200]
            changed.append(entry)
    LogEntry.objects.bulk_update(changed, ["object_repr"], batch_size=500)


def _purge_safety_records(result: PurgeResult, now: datetime, history_cutoff: datetime, common: _BatchOptions) -> None:
    """Refused swipes after ``REFUSAL_RETENTION_DAYS``; closed fault reports and confirmed checks after use with the
    history (``RETENTION_DAYS``). Open ones are kept whatever their age: they still lock their machine."""
    result.cutoffs["refusals"] = now - timedelta(days=settings.REFUSAL_RETENTION_DAYS)
    result.refusals = _batched(
        Refusal.objects.filter(at__lt=result.cutoffs["refusals"]),
        lambda qs: qs.delete()[0],
        step="refusals",
        **common,
    )
    result.fault_reports = _batched(
        FaultReport.objects.filter(closed_at__lt=history_cutoff),
        _delete_rows_of(FaultReport),
        step="fault reports",
        **common,
    )
    result.checks = _batched(
        MachineCheck.objects.filter(checked_at__lt=history_cutoff),
        _delete_rows_of(MachineCheck),
        step="checks after use",
        **common,
    )


def purge(
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    on_progress: Progress | None = None,
) -> PurgeResult:
    """Apply the retention rules (the daily ``manage.py purge``). See the module docstring."""
    now = now or timezone.now()
    history_cutoff = now - timedelta(days=settings.RETENTION_DAYS)
    card_cutoff = now - timedelta(days=settings.UNKNOWN_CARD_RETENTION_DAYS)
    result = PurgeResult(dry_run=dry_run, cutoffs={"history": history_cutoff, "unknown_cards": card_cutoff})
    anonymous = Member.objects.anonymous()
    common: _BatchOptions = {"dry_run": dry_run, "batch_size": batch_size, "on_progress": on_progress}

    # Members first: erasing them moves their (possibly recent) history to the anonymous member too.
    members = list(
        Member.objects.filter(deleted_at__lt=history_cutoff)
        .exclude(pk=anonymous.pk)
        .filter(_needs_erasure())
        .order_by("pk")
    )
    result.members = len(members)
    if not dry_run:
        for i, member in enumerate(members, 1):
            erase_member(member, now=now)
            if on_progress:
                on_progress("members", i, len(members))

    result.uses = _batched(
        Use.objects.filter(last_seen__lt=history_cutoff).exclude(member=anonymous),
        lambda qs: qs.update(member=anonymous),
        step="uses",
        **common,
    )
    result.interventions = _batched(
        Intervention.objects.filter(performed_at__lt=history_cutoff).exclude(member=anonymous),
        lambda qs: qs.update(member=anonymous),
        step="interventions",
        **common,
    )
    result.unknown_cards = _batched(
        UnknownCard.objects.filter(seen_at__lt=card_cutoff),
        lambda qs: qs.delete()[0],  # nothing cascades from it: Django issues one plain DELETE
        step="unknown cards",
        **common,
    )
    if not dry_run:
        _rename_anonymised_uses(anonymous)
        audit.follow_anonymisation(Use, anonymous)
        audit.follow_anonymisation(Intervention, anonymous)
    _purge_safety_records(result, now, history_cutoff, common)
    # The admin's history names people and cards: same retention as the history.
    result.admin_history = _batched(
        LogEntry.objects.filter(action_time__lt=history_cutoff),
        lambda qs: qs.delete()[0],
        step="admin history",
        **common,
    )
    # The audit trail: its own retention (AUDIT_RETENTION_DAYS).
    if audit.enabled():
        result.cutoffs["audit"] = now - timedelta(days=settings.AUDIT_RETENTION_DAYS)
        result.audit_entries = _batched(audit.expired(now), lambda qs: qs.delete()[0], step="audit trail", **common)
    # Login records of django-axes carry e-mail addresses and IPs: same retention as the history.
    for model in _axes_models():
        result.login_records += _batched(
            model._default_manager.filter(attempt_time__lt=history_cutoff),
            _delete_rows_of(model),
            step="login records",
            **common,
        )
    logger.info(result.summary())
    return result
