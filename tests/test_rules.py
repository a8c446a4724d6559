"""Domain rules: who may use what, maintenance due, card normalisation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from machines import services
from machines.models import Machine, MaintenancePlan, Use
from machines.services import Level, Refusal
from members.models import CARD_UID_RE, Card, normalize_uid, validate_uid
from telemetry import protocol as p


def test_it_lets_authorize_all_in_everywhere_even_blocked(lab):
    lab.laser.blocked = True
    decision = services.check_access(lab.admin, lab.laser)
    assert decision.allowed and decision.level == Level.STAFF


def test_it_refuses_disabled_before_anything_else(lab):
    lab.disabled.role = lab.admin.role
    decision = services.check_access(lab.disabled, lab.laser)
    assert not decision.allowed and decision.refusal == Refusal.DISABLED and decision.level == Level.INVALID


def test_it_refuses_deleted_members(lab):
    lab.normal.deleted_at = timezone.now()
    assert services.check_access(lab.normal, lab.laser).refusal == Refusal.DISABLED


def test_it_refuses_normal_members_on_blocked_machines(lab):
    lab.laser.blocked = True
    assert services.check_access(lab.normal, lab.laser).refusal == Refusal.BLOCKED


def test_it_lets_anyone_enabled_use_a_type_without_authorization(lab):
    decision = services.check_access(lab.unauthorized, lab.printer)
    assert decision.allowed and decision.level == Level.NORMAL


def test_it_needs_an_authorization_otherwise(lab):
    assert services.check_access(lab.normal, lab.laser).allowed
    assert services.check_access(lab.unauthorized, lab.laser).refusal == Refusal.NOT_AUTHORIZED


def test_maintenance_roles_are_staff_on_the_board(lab):
    decision = services.check_access(lab.staff, lab.laser)
    assert decision.allowed and decision.level == Level.STAFF
    assert services.may_record_maintenance(lab.staff)
    assert not services.may_record_maintenance(lab.normal)


def _closed_use(lab, seconds: int) -> Use:
    now = timezone.now()
    use = Use.objects.create(
        member=lab.normal, machine=lab.laser, started_at=now - timedelta(seconds=seconds), last_seen=now
    )
    return services.close_use(use, ended_at=now)


def test_maintenance_is_due_strictly_after_the_interval(lab):
    _closed_use(lab, 10 * 3600)
    lab.laser.refresh_from_db()
    assert services.maintenance_status(lab.laser) == (False, "")
    _closed_use(lab, 1)
    lab.laser.refresh_from_db()
    assert services.maintenance_status(lab.laser) == (True, "pulire lente")


def test_an_intervention_resets_only_due_items(lab):
    other = lab.laser.plans.create(hours_between=100, description="Belt")
    _closed_use(lab, 11 * 3600)
    lab.laser.refresh_from_db()
    done = services.record_interventions(machine=lab.laser, member=lab.staff)
    assert [i.plan for i in done] == [lab.plan]
    lab.laser.refresh_from_db()
    assert services.maintenance_status(lab.laser) == (False, "")
    other.refresh_from_db()
    assert other.done_at_hours == 0
    assert round(other.hours_since(lab.laser.hours), 2) == 11


def test_open_uses_do_not_count_towards_maintenance(lab):
    Use.objects.create(
        member=lab.normal,
        machine=lab.laser,
        started_at=timezone.now() - timedelta(hours=20),
        last_seen=timezone.now(),
    )
    lab.laser.refresh_from_db()
    assert services.maintenance_status(lab.laser) == (False, "")


def test_maintenance_status_costs_the_same_whatever_the_history(lab, django_assert_num_queries):
    for _ in range(5):
        _closed_use(lab, 60)
    lab.laser.refresh_from_db()
    with django_assert_num_queries(1):  # the plan items; no scan of uses
        services.maintenance_status(lab.laser)


def test_closing_a_use_twice_counts_hours_once(lab):
    use = _closed_use(lab, 3600)
    services.close_use(use, ended_at=timezone.now())
    lab.laser.refresh_from_db()
    assert round(lab.laser.hours, 3) == 1.0


def test_correcting_a_use_moves_the_hour_meter(lab):
    use = _closed_use(lab, 3600)
    services.correct_use(use, started_at=use.started_at, ended_at=use.started_at + timedelta(hours=2))
    lab.laser.refresh_from_db()
    assert round(lab.laser.hours, 3) == 2.0
    services.delete_use(Use.objects.get(pk=use.pk))
    lab.laser.refresh_from_db()
    assert round(lab.laser.hours, 3) == 0.0


def test_a_machine_has_at_most_one_open_use(lab):
    now = timezone.now()
    Use.objects.create(member=lab.normal, machine=lab.laser, started_at=now, last_seen=now)
    with pytest.raises(IntegrityError), transaction.atomic():
        Use.objects.create(member=lab.staff, machine=lab.laser, started_at=now, last_seen=now)


@pytest.mark.parametrize("raw", ["AABBCCD1", "aa:bb:cc:d1", " aabbccd1 ", "AA-BB-CC-D1"])
def test_card_uids_are_stored_normalised(lab, raw):
    assert normalize_uid(raw) == "aabbccd1"
    Card.objects.filter(uid="aabbccd1").delete()
    card = Card.objects.create(uid=raw, member=lab.normal)
    assert Card.objects.get(pk=card.pk).uid == "aabbccd1"


@pytest.mark.parametrize("raw", ["", "xyz", "aabbcc", "aabbccd1ff"])
def test_invalid_uids_are_rejected(raw):
    with pytest.raises(ValidationError):
        validate_uid(raw)


def test_due_in_sql_agrees_with_is_due_for_every_meter_reading(lab):
    """The admin's filters ask the database (MaintenancePlan.due_condition); the badges ask Python (is_due)."""
    readings = [0.0, 5.0, 9.0, 9.999, 10.0, 10.001, 12.5, 30.0]
    for done in (0.0, 2.5, 10.0, 40.0):  # 40: a meter set back below the last intervention
        MaintenancePlan.objects.filter(pk=lab.plan.pk).update(done_at_hours=done)
        for hours in readings:
            Machine.objects.filter(pk=lab.laser.pk).update(hours=hours)
            plan = MaintenancePlan.objects.select_related("machine").get(pk=lab.plan.pk)
            by_plan = MaintenancePlan.objects.filter(MaintenancePlan.due_condition(F("machine__hours")))
            by_machine = Machine.objects.filter(
                Exists(
                    MaintenancePlan.objects.filter(
                        MaintenancePlan.due_condition(OuterRef("hours")), machine=OuterRef("pk")
                    )
                )
            )
            assert by_plan.filter(pk=plan.pk).exists() == plan.is_due(), (done, hours)
            assert by_machine.filter(pk=lab.laser.pk).exists() == plan.is_due(), (done, hours)


@pytest.mark.parametrize(
    ("hours", "due", "soon"),
    [(0, False, False), (9, False, False), (9.01, False, True), (10, False, True), (10.01, True, False)],
)
def test_a_plan_is_due_soon_with_less_than_a_tenth_of_its_interval_left(lab, hours, due, soon):
    assert (lab.plan.is_due(hours), lab.plan.is_due_soon(hours)) == (due, soon)


def test_a_plan_is_shown_by_its_lcd_message_or_the_start_of_its_description(lab):
    assert lab.plan.short_label == "pulire lente"
    lab.plan.lcd_message = ""
    lab.plan.description = "Grease the spindle bearings"
    assert lab.plan.short_label == "Grease the spind"  # the LCD's 16 characters


@pytest.mark.parametrize(
    ("uid", "valid"),
    [("aabbccd1", True), ("aabbccd1223344", True), ("AABBCCD1", False), ("aabbccd12", False), ("aabbccd122", False)],
)
def test_boards_and_cards_share_one_uid_rule_8_or_14_lower_case_hex_digits(uid, valid):
    assert p.UID_RE is CARD_UID_RE
    assert bool(CARD_UID_RE.match(uid)) == valid
