"""Least privilege for roles (issue 11, item 1): a new member gets nothing beyond explicit authorizations, level 2
only with maintenance, and a role that opens every machine is said so wherever a role is chosen."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from machines import services
from machines.services import Level
from members.models import DEFAULT_ROLE, Card, Member, Role

from .boards import SimBoard
from .conftest import Lab

ADD = reverse("admin:members_member_add")


def test_it_does_not_preselect_a_default_role_that_authorizes_all(admin_client: Client, lab: Lab) -> None:
    Role.objects.create(name=DEFAULT_ROLE, authorize_all=True)  # what the import of a 1.0.x database made
    page = admin_client.get(ADD).content.decode()
    assert "selected>" + DEFAULT_ROLE not in page.replace('" ', "")
    assert 'value="" selected' in page  # staff must choose
    assert "opens EVERY machine" in page  # the banner names the broad role


def test_it_preselects_the_default_role_when_it_grants_nothing(admin_client: Client, lab: Lab) -> None:
    role = Role.objects.create(name=DEFAULT_ROLE)
    page = admin_client.get(ADD).content.decode()
    assert f'value="{role.pk}" selected' in page
    assert "authorized machines only" in page  # each choice says what it grants


def test_the_role_choices_mark_the_roles_that_open_every_machine(admin_client: Client, lab: Lab) -> None:
    page = admin_client.get(ADD).content.decode()
    assert "ADMIN — ⚠ EVERY machine, blocked ones too, maintenance (level 2 on boards)" in page
    assert "STAFF — authorized machines only, maintenance (level 2 on boards)" in page


def test_authorize_all_without_maintenance_is_level_1(lab: Lab) -> None:
    walk_in = Role.objects.create(name="Walk-in", authorize_all=True)
    member = Member.objects.create_user(email="w@lab.test", first_name="W", role=walk_in)
    decision = services.check_access(member, lab.laser)
    assert decision.allowed and decision.level == Level.NORMAL
    assert not services.may_record_maintenance(member)


@pytest.mark.django_db(transaction=True)
@pytest.mark.broker
def test_the_board_gets_level_1_for_authorize_all_without_maintenance(lab: Lab, m1: SimBoard) -> None:
    walk_in = Role.objects.create(name="Walk-in", authorize_all=True)
    member = Member.objects.create_user(email="w@lab.test", first_name="W", role=walk_in)
    Card.objects.create(uid="aabbccee", member=member)
    reply = m1.ask({"action": "checkuser", "uid": "aabbccee"})
    assert (reply["is_valid"], reply["level"]) == (True, 1)
    cards = m1.ask({"action": "synccache", "offset": 0})["cards"]
    assert {"uid": "aabbccee", "level": 1} in cards


def test_the_role_filters_mark_the_roles_that_open_every_machine(admin_client: Client, lab: Lab) -> None:
    """The members list's and the authorizations list's filter by role, as the form's choice says it."""
    walk_in = Role.objects.create(name="Walk-in", authorize_all=True)
    for changelist in ("admin:members_member_changelist", "admin:machines_authorization_changelist"):
        page = admin_client.get(reverse(changelist)).content.decode()
        sidebar = page[page.index('id="changelist-filter"') :]
        assert "ADMIN — ⚠ EVERY machine, blocked ones too, maintenance (level 2 on boards)" in sidebar, changelist
        assert "Walk-in — ⚠ EVERY machine, blocked ones too<" in sidebar, changelist  # level 1: no maintenance
        assert "USER — authorized machines only<" in sidebar, changelist
    members = admin_client.get(reverse("admin:members_member_changelist"), {"role__id__exact": walk_in.pk})
    selected = [part.lstrip().split("</a>")[0] for part in members.content.decode().split('<li class="selected">')[1:]]
    assert any(link.endswith(">Walk-in — ⚠ EVERY machine, blocked ones too") for link in selected), selected
