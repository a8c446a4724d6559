"""The access rule has one definition, ``machines.services.check_access``; the places that must read its inputs in
raw SQL (the bridge's fast path and its transactional path) or page its result in SQL (the board's card cache,
``services.may_use_filter``) are proved to agree with it on every combination of its inputs."""

from __future__ import annotations

import itertools

import pytest
from django.utils import timezone

from machines import services
from machines.models import Authorization, Machine, MachineType
from members.models import Card, Member, Role
from telemetry import fastpath, ingest
from telemetry import protocol as p

pytestmark = pytest.mark.django_db

UID = "0a0b0c0d"
FLAGS = ("authorize_all", "maintenance", "authorized", "requires_authorization", "blocked", "disabled", "inactive")


def decide_by_reply(reply: p.Reply | None) -> tuple[bool, int]:
    assert reply is not None
    return bool(reply["is_valid"]), int(reply["level"])


def test_every_path_applies_the_same_access_rule_on_every_combination() -> None:
    kind = MachineType.objects.create(name="T")
    machine = Machine.objects.create(id=7, name="M", type=kind)
    role = Role.objects.create(name="R")
    member = Member.objects.create_user(email="x@lab.test", first_name="Xena", role=role)
    Card.objects.create(uid=UID, member=member)
    checked = 0
    for values in itertools.product((False, True), repeat=len(FLAGS) + 1):
        case = dict(zip((*FLAGS, "deleted"), values, strict=True))
        Role.objects.filter(pk=role.pk).update(authorize_all=case["authorize_all"], maintenance=case["maintenance"])
        MachineType.objects.filter(pk=kind.pk).update(requires_authorization=case["requires_authorization"])
        Machine.objects.filter(pk=machine.pk).update(blocked=case["blocked"], last_seen=timezone.now())
        Member.objects.filter(pk=member.pk).update(
            disabled=case["disabled"],
            is_active=not case["inactive"],
            deleted_at=timezone.now() if case["deleted"] else None,
        )
        Authorization.objects.filter(member=member).delete()
        if case["authorized"]:
            Authorization.objects.create(member=member, machine=machine)

        rule = services.check_access(Member.objects.get(pk=member.pk), Machine.objects.get(pk=machine.pk))
        expected = (rule.allowed, int(rule.level))
        now = timezone.now()
        fast = fastpath._fast_check_user(machine.pk, p.CheckUser(uid=UID), now)
        # The fast path answers what it allows; a refusal is recorded with its reason on the transactional path.
        assert (fast is not None) == rule.allowed, case
        if fast is not None:
            assert decide_by_reply(fast.reply) == expected, ("fast path", case)
        slow = ingest._check_user(machine.pk, p.CheckUser(uid=UID), now)
        assert decide_by_reply(slow.reply) == expected, ("transactional path", case)
        cached = ingest._sync_cache(machine.pk, p.SyncCache())
        levels = {card["uid"]: card["level"] for card in cached["cards"]}
        assert (UID in levels, levels.get(UID, 0)) == expected, ("card cache", case)
        checked += 1
    assert checked == 2 ** (len(FLAGS) + 1)
