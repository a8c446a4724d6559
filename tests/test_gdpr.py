"""GDPR: the daily purge and erasure on request."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from axes.models import AccessLog
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.core.management import call_command
from django.db import connection
from django.test import Client, RequestFactory
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
        "0 login records, 0 admin history entries and 0 audit entries, 0 refusals, 0 closed fault reports and "
        "0 confirmed checks deleted."
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


# --- The admin's history ----------------------------------------------------------------------------------

ZOE = {"first_name": "Zoe", "last_name": "Privacysön", "email": "zoe.p@lab.test"}
TRACES = ["privacysön", "privacys\\u00f6n", "zoe.p@lab.test", "c0ffee42", "c0ffee43"]


def traces_in_database() -> list[str]:
    """Every table, every column: where any of the member's identifiers is still written."""
    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')  # names from the database itself
            for row in cursor.fetchall():
                text = " ".join(str(cell) for cell in row).lower()
                found += [f"{table}: {t}" for t in TRACES if t in text]
    return found


def _inline_data(page: str) -> dict[str, str]:
    import re

    data = {}
    for prefix in re.findall(r'name="([\w-]+)-TOTAL_FORMS"', page):
        data.update({f"{prefix}-TOTAL_FORMS": "1", f"{prefix}-INITIAL_FORMS": "0", f"{prefix}-MIN_NUM_FORMS": "0"})
        data[f"{prefix}-MAX_NUM_FORMS"] = "1000"
    return data


def test_erasure_leaves_no_trace_in_the_admin_history(lab: Lab, admin_client: Client) -> None:
    """Through the real admin: add a member with a card and an authorization, add and delete another card, record
    a use; a view-only staff member reads the history; the member is deleted (erased) in the portal."""
    page = admin_client.get("/admin/members/member/add/").content.decode()
    data = {**ZOE, "role": str(lab.normal.role_id), **_inline_data(page)}
    prefixes = sorted(k[: -len("-TOTAL_FORMS")] for k in data if k.endswith("-TOTAL_FORMS"))
    card_prefix = next(p for p in prefixes if "card" in p)
    auth_prefix = next(p for p in prefixes if "authorization" in p)
    data.update({f"{card_prefix}-0-uid": "C0:FF:EE:42", f"{card_prefix}-0-active": "on"})
    data.update({f"{auth_prefix}-0-machine": str(lab.laser.pk)})
    added = admin_client.post("/admin/members/member/add/", data)
    assert added.status_code == 302, added.content.decode()[:3000]
    zoe = Member.objects.get(email=ZOE["email"])
    assert zoe.cards.get().uid == "c0ffee42" and zoe.authorizations.count() == 1
    new_card = {"uid": "c0ffee43", "member": zoe.pk, "active": "on", "created_at_0": "2026-01-02"}
    card = admin_client.post("/admin/members/card/add/", {**new_card, "created_at_1": "10:00:00"})
    assert card.status_code == 302, card.context["adminform"].form.errors
    extra = Card.objects.get(uid="c0ffee43")
    assert admin_client.post(f"/admin/members/card/{extra.pk}/delete/", {"post": "yes"}).status_code == 302
    use = make_use(lab, zoe, NEW)
    admin = Member.objects.get(is_superuser=True, email__isnull=False)
    LogEntry.objects.log_actions(admin.pk, [use], ADDITION, change_message=[{"added": {}}])
    LogEntry.objects.log_actions(admin.pk, [use], CHANGE, change_message=[{"changed": {"fields": ["ended_at"]}}])
    viewer = Member.objects.create_user(
        email="viewer@lab.test", password="x-pass-123456", first_name="View", role=lab.normal.role, is_staff=True
    )
    viewer_client = Client()
    viewer_client.force_login(viewer)
    history = f"/admin/members/member/{zoe.pk}/history/"
    before = viewer_client.get(history).content.decode().lower()
    assert "c0ffee42" in before and "c0ffee43" in before and "privacys" in before  # what the issue saw
    assert {t.split(": ")[1] for t in traces_in_database()} >= {"c0ffee42", "c0ffee43", "zoe.p@lab.test"}

    deleted = admin_client.post(f"/admin/members/member/{zoe.pk}/delete/", {"post": "yes"})

    assert deleted.status_code == 302
    assert traces_in_database() == []
    after = viewer_client.get(history)
    assert after.status_code == 200
    assert not [t for t in TRACES if t in after.content.decode().lower()]
    # The entries themselves stay: who did what and when is the lab's own history.
    assert LogEntry.objects.filter(object_id=str(zoe.pk)).count() >= 2
    assert LogEntry.objects.filter(object_repr=ERASED_NAME).exists()


def test_purge_erases_a_member_from_the_admin_history_too(lab: Lab, admin_client: Client) -> None:
    zoe = Member.objects.create_user(**ZOE, role=lab.normal.role)
    card = Card.objects.create(uid="c0ffee42", member=zoe)
    admin = Member.objects.get(is_superuser=True, email__isnull=False)
    LogEntry.objects.log_actions(admin.pk, [card], ADDITION, change_message=[{"added": {}}])
    LogEntry.objects.log_actions(
        admin.pk, [zoe], CHANGE, change_message=[{"added": {"name": "card", "object": "c0ffee42"}}]
    )
    zoe.deleted_at = timezone.now() - OLD
    zoe.save()

    assert purge().members == 1
    assert traces_in_database() == []


def test_purge_deletes_admin_history_older_than_the_retention(lab: Lab, admin_client: Client) -> None:
    admin = Member.objects.get(is_superuser=True, email__isnull=False)
    old_use, new_use = make_use(lab, lab.normal, OLD), make_use(lab, lab.normal, NEW)
    for use in (old_use, new_use):
        LogEntry.objects.log_actions(admin.pk, [use], CHANGE, change_message=[{"changed": {"fields": ["ended_at"]}}])
    LogEntry.objects.filter(object_id=str(new_use.pk)).update(action_time=timezone.now() - OLD)  # an old edit
    assert LogEntry.objects.filter(object_repr__startswith="Nina Test on").count() == 2

    result = purge()

    # The old edit goes; the recent edit of a use now past the retention stays, without the name.
    assert result.admin_history == 1
    [kept] = LogEntry.objects.filter(content_type__model="use")
    assert kept.object_id == str(old_use.pk) and kept.object_repr.startswith("Anonymous on LASER 1")
    assert purge().admin_history == 0
