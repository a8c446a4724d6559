"""Machines and their history in the portal: corrections keep the hour meter right, maintenance, remote commands."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.messages import get_messages
from django.db.models import Q
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from fabomatic.admin import CappedPaginator
from machines.models import Intervention, Machine, MachineType, MaintenancePlan, Use
from members.models import Card, Member

from .conftest import Lab

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_passwords")]


USES = reverse("admin:machines_use_changelist")


def closed_use(member: Member, machine: Machine, hours: float, days_ago: float = 1) -> Use:
    start = timezone.now() - timedelta(days=days_ago)
    end = start + timedelta(hours=hours)
    Machine.objects.filter(pk=machine.pk).update(hours=machine.hours + hours)  # as the bridge would have
    machine.refresh_from_db()
    return Use.objects.create(
        member=member, machine=machine, started_at=start, ended_at=end, last_seen=end, duration=round(hours * 3600)
    )


def meter(machine: Machine) -> float:
    machine.refresh_from_db()
    return round(machine.hours, 4)


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def local(dt) -> dict[str, str]:
    dt = timezone.localtime(dt)
    return {"0": dt.strftime("%Y-%m-%d"), "1": dt.strftime("%H:%M:%S")}


def test_correcting_a_use_moves_the_hour_meter_by_the_difference(admin_client: Client, lab: Lab) -> None:
    use = closed_use(lab.normal, lab.laser, 1)
    assert meter(lab.laser) == 1
    start, end = local(use.started_at), local(use.started_at + timedelta(hours=2.5))
    response = admin_client.post(
        reverse("admin:machines_use_change", args=[use.pk]),
        {"started_at_0": start["0"], "started_at_1": start["1"], "ended_at_0": end["0"], "ended_at_1": end["1"]},
    )
    assert response.status_code == 302
    assert meter(lab.laser) == 2.5
    use.refresh_from_db()
    assert use.duration == 9000


def test_a_correction_cannot_put_the_end_before_the_start(admin_client: Client, lab: Lab) -> None:
    use = closed_use(lab.normal, lab.laser, 1)
    start, end = local(use.started_at), local(use.started_at - timedelta(hours=1))
    response = admin_client.post(
        reverse("admin:machines_use_change", args=[use.pk]),
        {"started_at_0": start["0"], "started_at_1": start["1"], "ended_at_0": end["0"], "ended_at_1": end["1"]},
    )
    assert response.status_code == 200
    assert meter(lab.laser) == 1


def test_end_now_closes_open_uses_and_adds_their_time(admin_client: Client, lab: Lab) -> None:
    now = timezone.now()
    use = Use.objects.create(
        member=lab.normal, machine=lab.laser, started_at=now - timedelta(hours=3), last_seen=now - timedelta(hours=1)
    )
    confirm = admin_client.post(USES, {"action": "end_now", "_selected_action": [use.pk]})
    assert confirm.status_code == 200 and "the board is offline, the use is closed here now" in confirm.content.decode()
    assert Use.objects.get().ended_at is None  # nothing happens before the confirmation
    response = admin_client.post(USES, {"action": "end_now", "_selected_action": [use.pk], "post": "yes"})
    assert response.status_code == 302
    use.refresh_from_db()
    assert use.duration is not None
    assert use.ended_at is not None and 3 * 3600 <= use.duration < 3 * 3600 + 60
    assert 3 <= meter(lab.laser) < 3.02


def test_a_use_registered_by_hand_needs_an_end_and_adds_hours(admin_client: Client, lab: Lab) -> None:
    start = timezone.now() - timedelta(days=1)
    form = {"member": lab.normal.pk, "machine": lab.laser.pk, "started_at_0": local(start)["0"]}
    form["started_at_1"] = local(start)["1"]
    add = reverse("admin:machines_use_add")
    assert admin_client.post(add, form).status_code == 200  # no end
    assert not Use.objects.exists()
    end = local(start + timedelta(minutes=90))
    assert admin_client.post(add, {**form, "ended_at_0": end["0"], "ended_at_1": end["1"]}).status_code == 302
    assert Use.objects.get().duration == 5400
    assert meter(lab.laser) == 1.5


def test_deleting_a_use_takes_its_hours_off_the_meter(admin_client: Client, lab: Lab) -> None:
    keep = closed_use(lab.normal, lab.laser, 2)
    drop = closed_use(lab.staff, lab.laser, 1, days_ago=2)
    assert meter(lab.laser) == 3
    admin_client.post(reverse("admin:machines_use_delete", args=[drop.pk]), {"post": "yes"})
    assert meter(lab.laser) == 2
    admin_client.post(USES, {"action": "delete_selected", "_selected_action": [keep.pk], "post": "yes"})
    assert meter(lab.laser) == 0
    assert not Use.objects.exists()


def test_uses_filter_by_member_machine_date_range_and_state(admin_client: Client, lab: Lab) -> None:
    old = closed_use(lab.normal, lab.laser, 1, days_ago=10)
    recent = closed_use(lab.normal, lab.printer, 1, days_ago=2)
    other = closed_use(lab.staff, lab.laser, 1, days_ago=2)
    now = timezone.now()
    open_use = Use.objects.create(member=lab.staff, machine=lab.printer, started_at=now, last_seen=now, replay=True)

    def listed(**params: str | int) -> set[int]:
        response = admin_client.get(USES, params)
        assert response.status_code == 200
        return {u.pk for u in response.context["cl"].result_list}

    assert listed(member__id__exact=lab.normal.pk) == {old.pk, recent.pk}
    assert listed(machine__id__exact=lab.laser.pk) == {old.pk, other.pk}
    since = timezone.localdate() - timedelta(days=5)
    assert listed(started_at__from=since.isoformat()) == {recent.pk, other.pk, open_use.pk}
    assert listed(started_at__to=since.isoformat()) == {old.pk}
    assert listed(open="yes") == {open_use.pk}
    assert listed(replay__exact="1") == {open_use.pk}
    page = admin_client.get(USES).content.decode()
    assert 'class="fab-replay" title="Replayed' in page


def test_the_uses_list_never_counts_past_its_cap(admin_client: Client, lab: Lab, monkeypatch) -> None:
    monkeypatch.setattr(CappedPaginator, "CAP", 3)
    for day in range(5):
        closed_use(lab.normal, lab.laser, 1, days_ago=day + 1)
    page = admin_client.get(USES).content.decode()
    assert "more than 3 uses" in page


def test_a_machine_type_with_machines_is_not_deleted_and_says_why(admin_client: Client, lab: Lab) -> None:
    mtype = MachineType.objects.get(name="T1")
    response = admin_client.post(reverse("admin:machines_machinetype_delete", args=[mtype.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert MachineType.objects.filter(pk=mtype.pk).exists()
    assert any("cannot be deleted" in m and "1 machine" in m for m in messages_of(response))
    empty = MachineType.objects.create(name="Unused")
    admin_client.post(reverse("admin:machines_machinetype_delete", args=[empty.pk]), {"post": "yes"})
    assert not MachineType.objects.filter(pk=empty.pk).exists()


def test_the_machines_list_shows_overdue_maintenance(admin_client: Client, lab: Lab) -> None:
    Machine.objects.filter(pk=lab.laser.pk).update(hours=12.5)
    page = admin_client.get(reverse("admin:machines_machine_changelist")).content.decode()
    assert "fab-badge-error" in page and "pulire lente 12:30/10:00" in page  # hours as h:mm, as the hour meter
    due = admin_client.get(reverse("admin:machines_machine_changelist"), {"maintenance": "due"})
    assert [m.pk for m in due.context["cl"].result_list] == [lab.laser.pk]


def test_the_yes_no_filters_split_machines_and_plans(admin_client: Client, lab: Lab) -> None:
    Machine.objects.filter(pk=lab.laser.pk).update(hours=12.5, last_seen=timezone.now())

    def shown(model: str, **params: str) -> list[int]:
        page = admin_client.get(reverse(f"admin:machines_{model}_changelist"), params)
        return sorted(row.pk for row in page.context["cl"].result_list)

    assert shown("machine", online="yes") == [lab.laser.pk]
    assert shown("machine", online="no") == [lab.printer.pk]
    assert shown("machine", maintenance="ok") == [lab.printer.pk]
    assert shown("maintenanceplan", due="yes") == [lab.plan.pk]
    assert shown("maintenanceplan", due="no") == []
    page = admin_client.get(reverse("admin:machines_machine_changelist")).content.decode()
    assert all(label in page for label in ("Online", "Offline", "Overdue", "Up to date"))


def test_recording_an_intervention_from_the_machine_page_resets_the_plan(admin_client: Client, lab: Lab) -> None:
    Machine.objects.filter(pk=lab.laser.pk).update(hours=12.5)
    url = reverse("admin:machines_machine_record", args=[lab.laser.pk, lab.plan.pk])
    assert admin_client.get(url).status_code == 405
    assert admin_client.post(url).status_code == 200  # the confirmation, with a note
    assert not Intervention.objects.exists()
    response = admin_client.post(url, {"post": "yes", "note": "new lens"})
    assert response.status_code == 302
    lab.plan.refresh_from_db()
    assert lab.plan.done_at_hours == 12.5
    assert Intervention.objects.get().machine_hours == 12.5
    assert Intervention.objects.get().note == "new lens"


def test_a_back_dated_intervention_resets_the_plan_only_if_it_is_the_latest(admin_client: Client, lab: Lab) -> None:
    closed_use(lab.normal, lab.laser, 4, days_ago=3)  # meter 4 three days ago... then 6 more
    closed_use(lab.normal, lab.laser, 6, days_ago=1)
    add = reverse("admin:machines_intervention_add")
    when = local(timezone.now() - timedelta(days=2))
    form = {"plan": lab.plan.pk, "member": lab.staff.pk, "performed_at_0": when["0"], "performed_at_1": when["1"]}
    assert admin_client.post(add, form).status_code == 302
    lab.plan.refresh_from_db()
    assert lab.plan.done_at_hours == 4  # the meter two days ago
    earlier = local(timezone.now() - timedelta(days=5))
    admin_client.post(add, {**form, "performed_at_0": earlier["0"], "performed_at_1": earlier["1"]})
    lab.plan.refresh_from_db()
    assert lab.plan.done_at_hours == 4  # an older one does not move the counter back
    assert Intervention.objects.count() == 2


def test_remote_start_is_refused_clearly_when_offline_or_without_a_card(admin_client: Client, lab: Lab) -> None:
    url = reverse("admin:machines_machine_remote", args=[lab.laser.pk, "start"])
    response = admin_client.post(url, {"post": "yes"})
    assert response.status_code == 302
    assert any("offline" in m for m in messages_of(response))

    Machine.objects.filter(pk=lab.laser.pk).update(last_seen=timezone.now())
    response = admin_client.post(url, {"post": "yes"})
    assert any("no active card" in m for m in messages_of(response))


def test_the_machine_page_has_post_only_remote_buttons_history_and_chart(admin_client: Client, lab: Lab) -> None:
    closed_use(lab.normal, lab.laser, 1)
    Card.objects.filter(member=lab.normal).update(active=True)
    page = admin_client.get(reverse("admin:machines_machine_change", args=[lab.laser.pk])).content.decode()
    assert 'formaction="/admin/machines/machine/1/remote/start/" formmethod="post"' in page
    assert "Record intervention" in page
    assert f"?machine__id__exact={lab.laser.pk}" in page
    assert "Nina Test" in page
    assert "<svg" in page
    assert MaintenancePlan.objects.count() == 1


def test_charts_sum_closed_hours_per_week_and_per_machine(lab: Lab) -> None:
    from machines import charts

    today = timezone.localdate()
    closed_use(lab.normal, lab.laser, 2, days_ago=7)  # last week
    closed_use(lab.normal, lab.laser, 1, days_ago=7)
    closed_use(lab.staff, lab.printer, 4, days_ago=7 * 20)  # outside the 12 weeks
    now = timezone.now()
    Use.objects.create(member=lab.staff, machine=lab.printer, started_at=now, last_seen=now)  # open: not counted

    week = timezone.localtime(timezone.now() - timedelta(days=7)).date()
    week -= timedelta(days=week.weekday())
    bars = charts.weekly_hours(Q(machine=lab.laser), today=today)
    assert len(bars) == 12 and {b.start: b.hours for b in bars if b.hours} == {week: 3}
    rows = {r.machine.name: r.total for r in charts.weekly_hours_per_machine(12, today=today)}
    assert rows == {"LASER 1": 3, "PRINTER 1": 0}
    assert sum(b.hours for b in charts.monthly_hours(Q(member=lab.normal), today=today)) == 3
    svg = charts.machines_weeks_chart(charts.weekly_hours_per_machine(12), title="<x>")
    assert svg.startswith("<svg") and "&lt;x&gt;" in svg and "<x>" not in svg


def test_a_maintainer_sees_machines_records_maintenance_but_changes_nothing_else(client: Client, lab: Lab) -> None:
    Member.objects.filter(pk=lab.staff.pk).update(is_staff=True)  # STAFF role: maintenance, no portal admin
    lab.staff.refresh_from_db()
    client.force_login(lab.staff)
    machine_page = client.get(reverse("admin:machines_machine_change", args=[lab.laser.pk]))
    assert machine_page.status_code == 200
    page = machine_page.content.decode()
    assert "Record intervention" in page and "Remote start" not in page

    record = reverse("admin:machines_machine_record", args=[lab.laser.pk, lab.plan.pk])
    assert client.post(record, {"post": "yes"}).status_code == 302
    assert Intervention.objects.filter(member=lab.staff).count() == 1
    assert client.post(reverse("admin:machines_machine_remote", args=[lab.laser.pk, "start"])).status_code == 403
    member_url = reverse("admin:members_member_change", args=[lab.normal.pk])
    assert client.post(member_url, {"first_name": "Changed"}).status_code == 403
    lab.normal.refresh_from_db()
    assert lab.normal.first_name == "Nina"


def test_an_open_use_page_has_an_end_now_button_that_closes_it(admin_client: Client, lab: Lab) -> None:
    now = timezone.now()
    use = Use.objects.create(member=lab.normal, machine=lab.laser, started_at=now - timedelta(hours=1), last_seen=now)
    page = admin_client.get(reverse("admin:machines_use_change", args=[use.pk])).content.decode()
    assert 'name="action" value="end_now"' in page
    # What the button submits: the whole change form, sent to the list's action handler.
    start = local(use.started_at)
    form = {"started_at_0": start["0"], "started_at_1": start["1"], "_selected_action": use.pk, "action": "end_now"}
    assert admin_client.post(USES, form).status_code == 200  # the confirmation
    assert admin_client.post(USES, {**form, "post": "yes"}).status_code == 302
    use.refresh_from_db()
    assert use.ended_at is not None and 1 <= meter(lab.laser) < 1.02


def test_the_machines_list_charts_the_machines_it_lists(client: Client, lab: Lab) -> None:
    """The chart follows the list's page, filters and search: a lab of 1,000 machines drew a 1.7 MB chart."""
    admin = Member.objects.create_superuser(email="root@lab.test", password="x", first_name="Root")
    client.force_login(admin)

    everything = client.get(reverse("admin:machines_machine_changelist")).content.decode()
    searched = client.get(reverse("admin:machines_machine_changelist") + "?q=laser").content.decode()

    chart = '<svg class="fab-chart"'
    assert chart in everything and chart in searched
    assert ">PRINTER 1</text>" in everything and ">LASER 1</text>" in everything
    assert ">LASER 1</text>" in searched and ">PRINTER 1</text>" not in searched
