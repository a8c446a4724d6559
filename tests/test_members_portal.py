"""Members in the portal: registration from an unknown card, bulk authorization, erasure, roles, cards."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from machines.models import Authorization, Machine, MachineType, Use
from members.models import Card, Member, Role, UnknownCard

from .conftest import Lab

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_passwords")]


ADD = reverse("admin:members_member_add")
CHANGELIST = reverse("admin:members_member_changelist")


def member_form(role: Role, cards: list[dict] | None = None, **fields: object) -> dict[str, object]:
    data: dict[str, object] = {
        "first_name": "Greta",
        "last_name": "Verdi",
        "email": "",
        "role": role.pk,
        "cards-TOTAL_FORMS": len(cards or []),
        "cards-INITIAL_FORMS": 0,
        "authorizations-TOTAL_FORMS": 0,
        "authorizations-INITIAL_FORMS": 0,
        "_save": "Save",
    }
    for i, card in enumerate(cards or []):
        data.update({f"cards-{i}-{key}": value for key, value in card.items()})
    data.update(fields)
    return data


def closed_use(member: Member, machine, hours: float, days_ago: float = 1) -> Use:
    start = timezone.now() - timedelta(days=days_ago)
    end = start + timedelta(hours=hours)
    return Use.objects.create(
        member=member, machine=machine, started_at=start, ended_at=end, last_seen=end, duration=round(hours * 3600)
    )


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_unknown_cards_are_listed_newest_first_with_a_register_link(admin_client: Client, lab: Lab) -> None:
    UnknownCard.objects.create(uid="deadbeef", machine=lab.laser)
    UnknownCard.objects.create(uid="cafebabe", machine=lab.printer)
    UnknownCard.objects.create(uid="aabbccd1", machine=lab.printer)  # Alice's card: not unknown any more
    page = admin_client.get(CHANGELIST).content.decode()
    assert page.index("cafebabe") < page.index("deadbeef")
    assert f"{ADD}?card=deadbeef" in page
    assert "Register as new member" in page
    panel = page[page.index("fab-unknown-cards") : page.index("</details>")]
    assert "aabbccd1" not in panel


def test_registering_from_an_unknown_card_prefills_it_and_clears_its_swipes(admin_client: Client, lab: Lab) -> None:
    UnknownCard.objects.create(uid="deadbeef", machine=lab.laser, count=2)
    UnknownCard.objects.create(uid="deadbeef", machine=lab.printer)
    UnknownCard.objects.create(uid="cafebabe", machine=lab.laser)

    form = admin_client.get(ADD, {"card": "DEADBEEF"}).content.decode()
    assert re.search(r'name="cards-0-uid"[^>]*value="deadbeef"', form)

    role = Role.objects.get(name="USER")
    # The browser sends the pre-filled row back untouched.
    response = admin_client.post(f"{ADD}?card=deadbeef", member_form(role, cards=[{"uid": "deadbeef", "active": "on"}]))
    assert response.status_code == 302, response.context["errors"] if response.context else response
    greta = Member.objects.get(first_name="Greta")
    assert list(greta.cards.values_list("uid", flat=True)) == ["deadbeef"]
    assert not greta.has_usable_password()
    assert not UnknownCard.objects.filter(uid="deadbeef").exists()
    assert UnknownCard.objects.filter(uid="cafebabe").count() == 1


def test_card_uids_are_normalised_validated_and_unique(admin_client: Client, lab: Lab) -> None:
    role = Role.objects.get(name="USER")
    response = admin_client.post(ADD, member_form(role, cards=[{"uid": "DE:AD:BE:EF", "active": "on"}]))
    assert response.status_code == 302
    assert Card.objects.filter(uid="deadbeef", member__first_name="Greta").exists()

    for bad in ("xyz12345", "aabbccd1"):  # not hex; Alice's card
        response = admin_client.post(ADD, member_form(role, cards=[{"uid": bad, "active": "on"}], first_name="Bad"))
        assert response.status_code == 200
        assert not Member.objects.filter(first_name="Bad").exists()


def test_the_weekly_summary_needs_an_e_mail(admin_client: Client, lab: Lab) -> None:
    role = Role.objects.get(name="USER")
    response = admin_client.post(ADD, member_form(role, receive_weekly_summary="on"))
    assert response.status_code == 200
    assert "The weekly summary needs an e-mail address." in response.content.decode()


def test_a_member_page_shows_cards_authorizations_last_uses_and_total_hours(admin_client: Client, lab: Lab) -> None:
    for hours in (1, 2):
        closed_use(lab.normal, lab.laser, hours, days_ago=hours)
    page = admin_client.get(reverse("admin:members_member_change", args=[lab.normal.pk])).content.decode()
    assert "aabbccd3" in page  # card inline
    assert "LASER 1" in page  # authorization inline and uses
    assert "3:00" in page  # total hours
    assert "<svg" in page  # usage chart
    assert reverse("fabomatic_member_report", args=[lab.normal.pk]) in page  # GDPR access report


def test_bulk_action_grants_then_revokes_machines(admin_client: Client, lab: Lab) -> None:
    extra = Machine.objects.create(id=3, name="CNC", type=MachineType.objects.create(name="Type CNC"))
    members = [lab.normal.pk, lab.unauthorized.pk]
    base = {"action": "grant_revoke_machines", "_selected_action": members}
    page = admin_client.post(CHANGELIST, base)
    assert page.status_code == 200 and "CNC" in page.content.decode()

    response = admin_client.post(
        CHANGELIST, {**base, "apply": "1", "operation": "grant", "machines": [lab.laser.pk, extra.pk]}
    )
    assert response.status_code == 302
    pairs = set(Authorization.objects.filter(member_id__in=members).values_list("member_id", "machine_id"))
    assert pairs == {(m, mc) for m in members for mc in (lab.laser.pk, extra.pk)}

    admin_client.post(CHANGELIST, {**base, "apply": "1", "operation": "revoke", "machines": [lab.laser.pk]})
    pairs = set(Authorization.objects.filter(member_id__in=members).values_list("member_id", "machine_id"))
    assert pairs == {(m, extra.pk) for m in members}
    assert Authorization.objects.filter(member=lab.staff, machine=lab.laser).exists()  # not selected: untouched


def test_deleting_a_member_erases_them_and_keeps_their_history(admin_client: Client, lab: Lab) -> None:
    use = closed_use(lab.normal, lab.laser, 1)
    url = reverse("admin:members_member_delete", args=[lab.normal.pk])
    assert "Yes, erase" in admin_client.get(url).content.decode()
    assert admin_client.post(url, {"post": "yes"}).status_code == 302
    erased = Member.objects.get(pk=lab.normal.pk)
    assert erased.deleted_at is not None and erased.email is None and erased.first_name != "Nina"
    assert not Card.objects.filter(uid="aabbccd3").exists()
    assert Use.objects.get(pk=use.pk).member_id != lab.normal.pk  # moved to the anonymous member, not deleted


def test_a_role_with_members_is_not_deleted_and_says_why(admin_client: Client, lab: Lab) -> None:
    role = Role.objects.get(name="USER")
    response = admin_client.post(reverse("admin:members_role_delete", args=[role.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert Role.objects.filter(pk=role.pk).exists()
    assert any("cannot be deleted" in m and "3 members" in m for m in messages_of(response))


def test_reserved_roles_are_read_only(admin_client: Client, lab: Lab) -> None:
    reserved = Role.objects.create(name="SYSTEM", reserved=True)
    change = admin_client.get(reverse("admin:members_role_change", args=[reserved.pk])).content.decode()
    assert 'name="name"' not in change  # view-only page
    admin_client.post(reverse("admin:members_role_change", args=[reserved.pk]), {"name": "HACKED"})
    assert admin_client.post(reverse("admin:members_role_delete", args=[reserved.pk]), {"post": "yes"}).status_code
    reserved.refresh_from_db()
    assert reserved.name == "SYSTEM"
