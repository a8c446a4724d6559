"""members.services: the rules the portal, the commands and the API share (authorizations, cards, erasure)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from machines.models import Authorization, Machine, MachineType
from members import services
from members.models import Card, Member, UnknownCard

from .conftest import Lab


def _pairs(*members: Member) -> set[tuple[int, int]]:
    return set(Authorization.objects.filter(member__in=members).values_list("member_id", "machine_id"))


def test_it_grants_what_is_missing_and_keeps_what_exists(lab: Lab) -> None:
    granted_at = Authorization.objects.get(member=lab.normal, machine=lab.laser).granted_at
    created = services.grant_authorizations(members=[lab.normal, lab.unauthorized], machines=[lab.laser, lab.printer])
    assert created == 3  # Nina already had the laser
    assert _pairs(lab.normal, lab.unauthorized) == {
        (m.pk, mc.pk) for m in (lab.normal, lab.unauthorized) for mc in (lab.laser, lab.printer)
    }
    assert Authorization.objects.get(member=lab.normal, machine=lab.laser).granted_at == granted_at


def test_it_grants_nothing_to_erased_members(lab: Lab) -> None:
    Member.objects.filter(pk=lab.unauthorized.pk).update(deleted_at=timezone.now())
    lab.unauthorized.refresh_from_db()
    assert services.grant_authorizations(members=[lab.unauthorized], machines=[lab.laser]) == 0
    assert not _pairs(lab.unauthorized)


def test_it_revokes_only_the_chosen_pairs(lab: Lab) -> None:
    cnc = Machine.objects.create(id=3, name="CNC", type=MachineType.objects.create(name="Type CNC"))
    services.grant_authorizations(members=[lab.normal], machines=[cnc])
    assert services.revoke_authorizations(members=[lab.normal, lab.unauthorized], machines=[lab.laser]) == 1
    assert _pairs(lab.normal) == {(lab.normal.pk, cnc.pk)}
    assert Authorization.objects.filter(member=lab.staff, machine=lab.laser).exists()


def test_a_registered_card_clears_its_unknown_card_rows(lab: Lab) -> None:
    UnknownCard.objects.create(uid="deadbeef", machine=lab.laser, count=5)
    UnknownCard.objects.create(uid="deadbeef", machine=lab.printer)
    UnknownCard.objects.create(uid="cafebabe", machine=lab.laser)
    # The number of rows (one per card and machine), not of swipes: the portal's message counts these.
    assert services.clear_unknown_cards(uids=["DE:AD:BE:EF"]) == 2
    assert list(UnknownCard.objects.values_list("uid", flat=True)) == ["cafebabe"]


def test_register_card_validates_stores_normalised_and_clears_unknown_rows(lab: Lab) -> None:
    UnknownCard.objects.create(uid="deadbeef", machine=lab.laser)
    card = services.register_card(member=lab.unauthorized, uid="DE:AD:BE:EF")
    assert Card.objects.get(pk=card.pk).uid == "deadbeef" and card.member == lab.unauthorized and card.active
    assert not UnknownCard.objects.exists()
    for bad in ("xyz12345", "aabbccd1"):  # not hex; Alice's card
        with pytest.raises(ValidationError):
            services.register_card(member=lab.unauthorized, uid=bad)
    assert lab.unauthorized.cards.count() == 2


def test_unregistered_cards_are_the_unknown_uids_no_card_has_newest_first(lab: Lab) -> None:
    now = timezone.now()
    UnknownCard.objects.create(uid="deadbeef", machine=lab.laser, seen_at=now - timedelta(hours=3), count=4)
    UnknownCard.objects.create(uid="deadbeef", machine=lab.printer, seen_at=now - timedelta(hours=1))
    UnknownCard.objects.create(uid="cafebabe", machine=lab.laser, seen_at=now - timedelta(hours=2))
    UnknownCard.objects.create(uid="aabbccd1", machine=lab.laser, seen_at=now)  # Alice's card
    rows = services.unregistered_cards(limit=20)
    assert [(r["uid"], r["machine"], r["swipes"]) for r in rows] == [
        ("deadbeef", "PRINTER 1", 2),  # swipes: its rows, one per machine
        ("cafebabe", "LASER 1", 1),
    ]
    assert [r["uid"] for r in services.unregistered_cards(limit=1)] == ["deadbeef"]


def test_nobody_erases_themselves_the_anonymous_member_or_an_erased_one(lab: Lab) -> None:
    anonymous = Member.objects.anonymous()
    assert services.may_erase(lab.normal, by=lab.admin)
    assert not services.may_erase(lab.admin, by=lab.admin)
    everyone = Member.objects.filter(pk__in=[lab.normal.pk, lab.admin.pk, anonymous.pk])
    assert services.erase_members(everyone, by=lab.admin) == 1
    lab.normal.refresh_from_db()
    assert lab.normal.deleted_at is not None and not services.may_erase(lab.normal, by=lab.admin)
    assert Member.objects.get(pk=lab.admin.pk).deleted_at is None
    anonymous.refresh_from_db()
    assert anonymous.deleted_at is None and anonymous.first_name == "Anonymous"
    assert services.erase_members(everyone, by=lab.admin) == 0


def test_password_emails_go_to_active_portal_users_with_an_address(lab: Lab, mailoutbox: list) -> None:
    Member.objects.filter(pk__in=[lab.admin.pk, lab.staff.pk]).update(is_staff=True)
    Member.objects.filter(pk=lab.staff.pk).update(is_active=False)
    sent = services.send_password_emails(Member.objects.all())
    assert sent == 1
    assert [m.to for m in mailoutbox] == [[lab.admin.email]]
