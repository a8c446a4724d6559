"""Rules about members and their cards that the portal, the commands and the coming API all follow.

Plain functions: the admin parses the request and calls them, and says what happened.
Erasure itself (what it anonymises) is ``members.gdpr.erase_member``; who may be erased is decided here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.db import transaction
from django.db.models import Count, Max, OuterRef, QuerySet, Subquery

from machines.models import Authorization, Machine
from machines.training import TYPE_RULE, Rule, grant_many

from .gdpr import erase_member
from .models import Card, Member, UnknownCard, normalize_uid
from .password_reset import send_reset_mail

# --- Authorizations ---------------------------------------------------------------------------------------


@transaction.atomic
def grant_authorizations(
    *, members: Sequence[Member], machines: Sequence[Machine], by: Member | None = None, rule: Rule = TYPE_RULE
) -> int:
    """Authorize every member on every machine (``machines.safety.grant``: ``by`` as the trainer, the machine type's
    expiry unless ``rule`` says otherwise); authorizations they already have are kept as they are, and erased
    members get none. Returns how many were created. Whether ``by`` may train on the machines is the caller's check
    (``machines.safety.may_train``).
    """
    return grant_many(members=members, machines=machines, by=by, rule=rule)


@transaction.atomic
def revoke_authorizations(*, members: Sequence[Member], machines: Sequence[Machine]) -> int:
    """Withdraw every member's authorization on every machine; returns how many there were."""
    deleted, _detail = Authorization.objects.filter(member__in=members, machine__in=machines).delete()
    return deleted


# --- Cards --------------------------------------------------------------------------------------------


def clear_unknown_cards(*, uids: Iterable[str]) -> int:
    """A registered card is not unknown any more: delete its unknown-card rows (one per card and machine).

    Call it whenever cards are registered or changed. Returns the number of rows deleted, not of swipes.
    """
    deleted, _detail = UnknownCard.objects.filter(uid__in=[normalize_uid(uid) for uid in uids]).delete()
    return deleted


@transaction.atomic
def register_card(*, member: Member, uid: str, active: bool = True) -> Card:
    """Give a member a card, validated as the portal validates it (raises ``ValidationError``); its unknown-card
    rows are cleared."""
    card = Card(member=member, uid=normalize_uid(uid), active=active)
    card.full_clean()
    card.save()
    clear_unknown_cards(uids=[card.uid])
    return card


def unregistered_cards(*, limit: int) -> list[dict[str, Any]]:
    """The latest unknown UIDs that no card has, newest first: one row per UID with ``uid``, ``last_seen``, ``swipes``
    (its rows: one per machine it was swiped on) and ``machine`` (the name of the machine it was last seen on)."""
    latest = UnknownCard.objects.filter(uid=OuterRef("uid")).order_by("-seen_at")
    rows = (
        UnknownCard.objects.exclude(uid__in=Card.objects.values("uid"))
        .order_by()
        .values("uid")
        .annotate(
            last_seen=Max("seen_at"),
            swipes=Count("id"),
            machine=Subquery(latest.values("machine__name")[:1]),
        )
        .order_by("-last_seen")[:limit]
    )
    return list(rows)


# --- Portal access ---------------------------------------------------------------------------------------


def send_password_emails(members: QuerySet[Member]) -> int:
    """Mail a password link to each portal user among ``members`` (staff, active, with an address); returns how
    many were mailed. Links point to ``PUBLIC_URL``, never to a request's host (``password_reset.link_options``)."""
    sent = 0
    for member in members.filter(is_staff=True, is_active=True, email__isnull=False):
        if member.email:  # not None (the filter); an empty address is not mailed either way (the form refuses it)
            sent += send_reset_mail(member.email)
    return sent


# --- Erasure ----------------------------------------------------------------------------------------------


def may_erase(member: Member, *, by: Member) -> bool:
    """Nobody erases themselves, and a member is erased once."""
    return member.pk != by.pk and member.deleted_at is None


def erase_members(members: QuerySet[Member], *, by: Member) -> int:
    """Erase each of ``members`` that ``by`` may erase (``members.gdpr.erase_member``), never the anonymous member
    that history is moved to. Returns how many were erased."""
    erasable = [m for m in members.exclude(pk=Member.objects.anonymous().pk) if may_erase(m, by=by)]
    for member in erasable:
        erase_member(member)
    return len(erasable)
