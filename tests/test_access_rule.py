"""The access rule has one definition, ``machines.services.check_access``; the places that must read its inputs in
raw SQL (the bridge's fast path and its transactional path) or page its result in SQL (the board's card cache,
``services.may_use_filter``) are proved to agree with it on every combination of its inputs, the safety workflows'
included: an authorization that is missing, valid or lapsed; a machine locked by an out-of-order fault report or by
a pending check after use (docs/protocol.md §9); maintenance due, which the board itself enforces (the fast path
hands those swipes to the transactional path, which keeps the board's refusal with its reason)."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.utils import timezone

from machines import safety, services
from machines.models import Authorization, FaultReport, Machine, MachineCheck, MachineType, MaintenancePlan, Refusal
from members.models import Card, Member, Role
from telemetry import fastpath, ingest
from telemetry import protocol as p

pytestmark = pytest.mark.django_db

UID = "0a0b0c0d"
FLAGS = ("authorize_all", "maintenance", "requires_authorization", "blocked", "disabled", "inactive", "deleted", "due")
AUTHORIZATIONS = ("none", "valid", "expired")
LOCKS = ("none", "fault", "check")


def decide_by_reply(reply: p.Reply | None) -> tuple[bool, int]:
    assert reply is not None
    return bool(reply["is_valid"]), int(reply["level"])


def set_case(member: Member, role: Role, machine: Machine, plan: MaintenancePlan, case: dict) -> None:
    now = timezone.now()
    Role.objects.filter(pk=role.pk).update(authorize_all=case["authorize_all"], maintenance=case["maintenance"])
    MachineType.objects.filter(pk=machine.type_id).update(requires_authorization=case["requires_authorization"])
    Machine.objects.filter(pk=machine.pk).update(blocked=case["blocked"], last_seen=now)
    MaintenancePlan.objects.filter(pk=plan.pk).update(done_at_hours=0.0 if case["due"] else 100.0)
    Member.objects.filter(pk=member.pk).update(
        disabled=case["disabled"],
        is_active=not case["inactive"],
        deleted_at=now if case["deleted"] else None,
    )
    Authorization.objects.filter(member=member).delete()
    if case["authorization"] != "none":
        lapse = now - timedelta(days=1) if case["authorization"] == "expired" else now + timedelta(days=1)
        Authorization.objects.create(member=member, machine=machine, expiry="on_date", expires_at=lapse)
    FaultReport.objects.all().delete()
    MachineCheck.objects.all().delete()
    if case["lock"] == "fault":
        safety.report_fault(machine, severity=FaultReport.Severity.OUT_OF_ORDER, description="smoke")
        safety.report_fault(machine, severity=FaultReport.Severity.MINOR, description="a scratch")  # never locks
    elif case["lock"] == "check":
        MachineCheck.objects.create(machine=machine, requested_at=now)


def test_every_path_applies_the_same_access_rule_on_every_combination() -> None:
    kind = MachineType.objects.create(name="T")
    machine = Machine.objects.create(id=7, name="M", type=kind, hours=50.0)
    plan = MaintenancePlan.objects.create(machine=machine, hours_between=10, description="Clean")
    role = Role.objects.create(name="R")
    member = Member.objects.create_user(email="x@lab.test", first_name="Xena", role=role)
    Card.objects.create(uid=UID, member=member)
    checked = 0
    for values in itertools.product((False, True), repeat=len(FLAGS)):
        for authorization, lock in itertools.product(AUTHORIZATIONS, LOCKS):
            case = {**dict(zip(FLAGS, values, strict=True)), "authorization": authorization, "lock": lock}
            set_case(member, role, machine, plan, case)
            fresh_member, fresh_machine = Member.objects.get(pk=member.pk), Machine.objects.get(pk=machine.pk)
            rule = services.check_access(fresh_member, fresh_machine)
            expected = (rule.allowed, int(rule.level))
            # The board's own refusal of an allowed card (blocked machine; maintenance due below level 2).
            by_board = services.board_refusal(rule, fresh_machine)
            assert by_board == (
                (Refusal.Reason.BLOCKED if case["blocked"] else None)
                or (Refusal.Reason.MAINTENANCE_DUE if case["due"] and rule.level < 2 else None)
                if rule.allowed
                else None
            ), case
            now = timezone.now()
            fast = fastpath._fast_check_user(machine.pk, p.CheckUser(uid=UID), now)
            # The fast path answers only the cards the board lets in; every refusal is recorded on the
            # transactional path, with the reason the rule gives.
            assert (fast is not None) == (rule.allowed and by_board is None), case
            if fast is not None:
                assert decide_by_reply(fast.reply) == expected, ("fast path", case)
            Refusal.objects.all().delete()
            slow = ingest._check_user(machine.pk, p.CheckUser(uid=UID), now)
            assert decide_by_reply(slow.reply) == expected, ("transactional path", case)
            recorded = list(Refusal.objects.values_list("reason", flat=True))
            assert recorded == [r for r in (rule.refusal or by_board,) if r], ("refusal", case)
            cached = ingest._sync_cache(machine.pk, p.SyncCache())
            levels = {card["uid"]: card["level"] for card in cached["cards"]}
            assert (UID in levels, levels.get(UID, 0)) == expected, ("card cache", case)
            # checkmachine on both paths: a lock shows as maintenance with its message, before a due plan's.
            replies = [
                fastpath._fast_check_machine(machine.pk, p.CheckMachine(), now),
                ingest._check_machine(machine.pk, p.CheckMachine(), now),
            ]
            message = safety.lock_message(lock) if lock != "none" else "Clean" if case["due"] else ""
            for outcome in replies:
                assert outcome is not None and outcome.reply is not None
                shown = (outcome.reply["maintenance"], outcome.reply["description"], outcome.reply["allowed"])
                assert shown == (lock != "none" or case["due"], message, not case["blocked"]), case
            checked += 1
    assert checked == 2 ** len(FLAGS) * len(AUTHORIZATIONS) * len(LOCKS)
