"""GDPR: the daily purge and erasure on request."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from axes.models import AccessLog
from django.core.management import call_command
from django.test import RequestFactory
from django.utils import timezone

from machines.models import Authorization, Intervention, Machine, Use
from members.gdpr import ERASED_NAME, erase_member, purge
from members.models import Card, Member, UnknownCard

from .conftest import Lab

pytestmark = pytest.mark.django_db

OLD = timedelta(days=400)
NEW = timedelta(days=10)


def make_use(lab: Lab, member: Member, age: timedelta, hours: float = 1.0) -> Use:
    start = timezone.now() - age
    return Use.objects.create(
        member=member,
        machine=lab.laser,
        started_at=start,
        ended_at=start + timedelta(hours=hours),
        last_seen=start + timedelta(hours=hours),
        duration=int(hours * 3600),
    )


def make_intervention(lab: Lab, member: Member, age: timedelta) -> Intervention:
    return Intervention.objects.create(
        plan=lab.plan, machine=lab.laser, member=member, performed_at=timezone.now() - age, machine_hours=12.5
    )


def test_it_anonymises_only_history_older_than_the_retention(lab: Lab) -> None:
    lab.laser.hours = 42.0
    lab.laser.save()
    old_use, new_use = make_use(lab, lab.normal, OLD, 2), make_use(lab, lab.normal, NEW, 3)
    old_fix, new_fix = make_intervention(lab, lab.staff, OLD), make_intervention(lab, lab.staff, NEW)

    result = purge()

    anonymous = Member.objects.anonymous()
    old_use.refresh_from_db()
    new_use.refresh_from_db()
    old_fix.refresh_from_db()
    new_fix.refresh_from_db()
    assert old_use.member == anonymous and new_use.member == lab.normal
    assert old_fix.member == anonymous and new_fix.member == lab.staff
    assert (result.uses, result.interventions) == (1, 1)
    # Hours and maintenance history are intact.
    assert old_use.duration == 7200 and old_use.machine == lab.laser
    assert old_fix.machine_hours == 12.5 and old_fix.plan == lab.plan
    assert Machine.objects.get(pk=lab.laser.pk).hours == 42.0
    assert Use.objects.count() == 2 and Intervention.objects.count() == 2


def test_it_is_idempotent(lab: Lab) -> None:
    make_use(lab, lab.normal, OLD)
    make_intervention(lab, lab.staff, OLD)
    UnknownCard.objects.create(uid="deadbeef", machine=lab.laser, seen_at=timezone.now() - timedelta(days=31))
    first = purge()
    assert first.total == 3
    second = purge()
    assert second.total == 0


def test_it_deletes_unknown_cards_older_than_30_days(lab: Lab) -> None:
    old = UnknownCard.objects.create(uid="deadbeef", machine=lab.laser, seen_at=timezone.now() - timedelta(days=31))
    new = UnknownCard.objects.create(uid="cafebabe", machine=lab.laser, seen_at=timezone.now() - timedelta(days=29))
    assert purge().unknown_cards == 1
    assert list(UnknownCard.objects.all()) == [new]
    assert not UnknownCard.objects.filter(pk=old.pk).exists()


def test_it_erases_soft_deleted_members_past_the_retention(lab: Lab) -> None:
    lab.normal.deleted_at = timezone.now() - OLD
    lab.normal.save()
    lab.unauthorized.deleted_at = timezone.now() - NEW  # deleted recently: kept for now
    lab.unauthorized.save()
    recent = make_use(lab, lab.normal, NEW)

    assert purge().members == 1

    gone = Member.objects.get(pk=lab.normal.pk)
    assert gone.email is None and gone.first_name == ERASED_NAME and gone.last_name == ""
    assert not gone.cards.exists() and not Authorization.objects.filter(member=gone).exists()
    recent.refresh_from_db()
    assert recent.member == Member.objects.anonymous()
    kept = Member.objects.get(pk=lab.unauthorized.pk)
    assert kept.email == "ugo@lab.test" and kept.cards.exists()
    assert purge().members == 0


def test_dry_run_writes_nothing(lab: Lab) -> None:
    use = make_use(lab, lab.normal, OLD)
    UnknownCard.objects.create(uid="deadbeef", machine=lab.laser, seen_at=timezone.now() - timedelta(days=31))
    lab.disabled.deleted_at = timezone.now() - OLD
    lab.disabled.save()
    out = StringIO()

    call_command("purge", "--dry-run", stdout=out)

    assert "Would purge: 1 uses" in out.getvalue()
    assert "1 unknown cards" in out.getvalue() and "1 members" in out.getvalue()
    use.refresh_from_db()
    assert use.member == lab.normal
    assert UnknownCard.objects.count() == 1
    assert Member.objects.get(pk=lab.disabled.pk).email == "dario@lab.test"


def test_the_command_prints_a_one_line_summary(lab: Lab) -> None:
    make_use(lab, lab.normal, OLD)
    out = StringIO()
    call_command("purge", stdout=out)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("Purged")]
    assert lines == [
        "Purged: 1 uses and 0 interventions anonymised, 0 unknown cards deleted, 0 members erased, "
        "0 login records deleted."
    ]


def test_it_purges_across_many_batches(lab: Lab) -> None:
    start = timezone.now() - OLD
    Use.objects.bulk_create(
        Use(member=lab.normal, machine=lab.laser, started_at=start, ended_at=start, last_seen=start, duration=60)
        for _ in range(250)
    )
    make_use(lab, lab.normal, NEW)
    seen: list[tuple[str, int, int]] = []

    result = purge(batch_size=7, on_progress=lambda *a: seen.append(a))

    assert result.uses == 250
    assert Use.objects.filter(member=lab.normal).count() == 1
    assert ("uses", 250, 250) in seen and len([s for s in seen if s[0] == "uses"]) > 30


def login(email: str, password: str) -> Member | None:
    from django.contrib.auth import authenticate

    return authenticate(RequestFactory().post("/admin/login/"), username=email, password=password)


def test_erase_member_anonymises_at_once_and_blocks_login(lab: Lab) -> None:
    member = lab.staff
    member.set_password("s3cret-pass!")
    member.is_staff = True
    member.save()
    assert login("sam@lab.test", "s3cret-pass!") == member
    use, fix = make_use(lab, member, NEW, 2), make_intervention(lab, member, NEW)
    AccessLog.objects.create(username="sam@lab.test", ip_address="10.0.0.9", user_agent="x", http_accept="x")

    erase_member(member)

    anonymous = Member.objects.anonymous()
    use.refresh_from_db()
    fix.refresh_from_db()
    assert use.member == anonymous and use.duration == 7200
    assert fix.member == anonymous and fix.machine_hours == 12.5
    member.refresh_from_db()
    assert member.email is None and member.first_name == ERASED_NAME
    assert member.deleted_at is not None and not member.is_active and not member.is_staff
    assert not member.has_usable_password()
    assert not Card.objects.filter(member=member).exists()
    assert not Authorization.objects.filter(member=member).exists()
    assert not AccessLog.objects.filter(username="sam@lab.test").exists()
    assert login("sam@lab.test", "s3cret-pass!") is None
    # Nothing identifies the person any more, and purge leaves the tombstone alone.
    assert "Sam" not in str(member)
    assert purge().members == 0


def test_the_anonymous_member_cannot_be_erased(db: None) -> None:
    with pytest.raises(ValueError):
        erase_member(Member.objects.anonymous())
