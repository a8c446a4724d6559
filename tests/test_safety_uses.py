"""The use lifecycle's safety rules without a broker (docs/protocol.md §9.4–§9.6): every way a use opens stamps the
member's training; every way a use closes opens the type's check after use exactly once; the hold's ``maintenance``
closes locks only live, and tells the dashboard."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from machines import safety, services
from machines.models import Authorization, FaultReport, Machine, MachineCheck, MachineType, Use
from members.models import Member
from telemetry import ingest, remote, sessions
from telemetry import protocol as p

from .conftest import Lab

pytestmark = pytest.mark.django_db

N, S = "aabbccd3", "aabbccd2"
Expiry = Authorization.Expiry


def wants_checks(lab: Lab) -> None:
    MachineType.objects.filter(pk=lab.laser.type_id).update(check_after_use=True)


def open_use(lab: Lab, minutes: int = 10) -> Use:
    start = timezone.now() - timedelta(minutes=minutes)
    return services.begin_use(member=lab.normal, machine_id=lab.laser.pk, started_at=start, last_seen=start)


def test_stamp_use_moves_an_idle_days_training_and_never_revives_or_moves_back(lab: Lab) -> None:
    now = timezone.now()
    trained = now - timedelta(days=20)
    safety.grant(lab.normal, lab.laser, by=lab.staff, now=trained, expiry=Expiry.IDLE_DAYS, days=30)
    use = open_use(lab)
    authorization = Authorization.objects.get(member=lab.normal, machine=lab.laser)
    assert (authorization.last_used_at, authorization.expires_at) == (use.started_at, use.started_at + timedelta(30))
    safety.stamp_use(lab.normal.pk, lab.laser.pk, use.started_at - timedelta(days=1))  # an older replay: nothing
    assert Authorization.objects.get(pk=authorization.pk).last_used_at == use.started_at
    Authorization.objects.filter(pk=authorization.pk).update(expires_at=now - timedelta(hours=1))
    safety.stamp_use(lab.normal.pk, lab.laser.pk, now)  # lapsed before this use: not revived
    assert Authorization.objects.get(pk=authorization.pk).expires_at == now - timedelta(hours=1)


def test_stamp_use_records_the_latest_use_of_other_rules_and_ignores_members_without_training(lab: Lab) -> None:
    use = open_use(lab)
    assert Authorization.objects.get(member=lab.normal, machine=lab.laser).last_used_at == use.started_at
    fixed = safety.grant(lab.staff, lab.laser, by=lab.admin, expiry=Expiry.ON_DATE, on_date=timezone.localdate())
    safety.stamp_use(lab.staff.pk, lab.laser.pk, timezone.now())
    assert Authorization.objects.get(pk=fixed.pk).expires_at == fixed.expires_at  # a date does not move
    safety.stamp_use(lab.unauthorized.pk, lab.laser.pk, timezone.now())
    assert not Authorization.objects.filter(member=lab.unauthorized).exists()


def test_every_way_a_use_closes_opens_one_check(lab: Lab) -> None:
    wants_checks(lab)
    # close_use, twice (a duplicate close closes nothing)
    use = open_use(lab)
    services.close_use(use, ended_at=timezone.now())
    services.close_use(Use.objects.get(pk=use.pk), ended_at=timezone.now())
    assert MachineCheck.objects.filter(use=use).count() == 1
    # housekeeping's orphans (S19)
    orphan = open_use(lab, minutes=180)
    assert sessions.close_orphans() == [lab.laser.pk]
    assert MachineCheck.objects.filter(use=orphan).count() == 1
    # the portal's "end use" with the board offline
    ended = open_use(lab)
    assert remote.end_use(ended, by=lab.staff) is True
    assert MachineCheck.objects.filter(use=ended).count() == 1
    # a staff correction that ends an open use
    corrected = open_use(lab)
    services.correct_use(corrected, started_at=corrected.started_at, ended_at=timezone.now())
    assert MachineCheck.objects.filter(use=corrected).count() == 1
    # a use staff add after the fact: none
    added = services.register_use(
        member=lab.normal, machine=lab.laser, started_at=timezone.now() - timedelta(hours=1), ended_at=timezone.now()
    )
    assert not MachineCheck.objects.filter(use=added).exists()
    assert MachineCheck.objects.count() == 4


def test_no_check_for_a_use_that_ended_before_the_latest_confirmation_or_on_another_type(lab: Lab) -> None:
    use = open_use(lab, minutes=30)
    services.close_use(use, ended_at=timezone.now() - timedelta(minutes=20))
    assert not MachineCheck.objects.exists()  # the type wants no check
    wants_checks(lab)
    MachineCheck.objects.create(machine=lab.laser, requested_at=timezone.now(), checked_at=timezone.now())
    assert safety.require_check(Use.objects.get(pk=use.pk)) is None  # it ended before the latest confirmation
    assert MachineCheck.objects.count() == 1


def maintenance(uid: str, *, replay: bool = False) -> tuple[p.Reply | None, bool]:
    outcome = ingest.process(1, p.Maintenance(uid=uid, replay=replay))
    return outcome.reply, outcome.changed


def test_the_hold_closes_locks_live_only_and_tells_the_dashboard(lab: Lab) -> None:
    Machine.objects.filter(pk=1).update(last_seen=timezone.now())
    fault = safety.report_fault(lab.laser, severity=FaultReport.Severity.OUT_OF_ORDER, description="Smoke")
    check = MachineCheck.objects.create(machine=lab.laser, requested_at=timezone.now())
    assert maintenance(N) == ({"request_ok": False, "message": "Not authorized"}, False)
    assert maintenance(S, replay=True) == ({"request_ok": True, "message": ""}, False)
    assert safety.lock_reason(1) == services.Refusal.FAULT
    assert maintenance(S) == ({"request_ok": True, "message": ""}, True)  # nothing due, but locks closed
    fault.refresh_from_db()
    check.refresh_from_db()
    assert fault.closed_by_id == check.checked_by_id == lab.staff.pk
    assert safety.lock_reason(1) is None
    assert maintenance(S) == ({"request_ok": True, "message": ""}, False)  # a duplicate: nothing


def test_a_board_refusal_is_recorded_and_broadcast_once_per_swipe(lab: Lab) -> None:
    Machine.objects.filter(pk=1).update(last_seen=timezone.now(), hours=11)  # "pulire lente" due
    first = ingest.process(1, p.CheckUser(uid=N))
    again = ingest.process(1, p.CheckUser(uid=N))
    assert first.reply == again.reply and first.reply is not None and first.reply["is_valid"] is True
    assert (first.changed, again.changed) == (True, False)
    assert list(lab.laser.refusals.values_list("reason", flat=True)) == [services.Refusal.MAINTENANCE_DUE]
    staff = ingest.process(1, p.CheckUser(uid=S))  # level 2 passes: the fast path answers it
    assert staff.reply is not None and staff.reply["level"] == 2 and lab.laser.refusals.count() == 1


def test_sign_off_takes_an_arming_once_even_when_two_bridges_read_it_at_once(lab: Lab, monkeypatch) -> None:
    """Two bridges may both read the arming before either takes it: the conditional UPDATE lets one card through
    (without it, both would be trained)."""
    lab.laser.trainers.add(lab.staff)
    safety.arm(lab.laser, lab.staff)
    stale = safety.active_arm(lab.laser.pk)
    monkeypatch.setattr(safety, "active_arm", lambda machine_id, now=None: stale)
    other = Member.objects.create_user(email="vera@lab.test", first_name="Vera", role=lab.unauthorized.role)
    assert safety.sign_off(lab.laser, lab.unauthorized) is not None
    assert safety.sign_off(lab.laser, other) is None
    assert list(Authorization.objects.filter(trained_by=lab.staff).values_list("member_id", flat=True)) == [
        lab.unauthorized.pk
    ]
