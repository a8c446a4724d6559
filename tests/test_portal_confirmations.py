"""Irreversible portal actions are confirmed and recorded (issue 11, items 2 and 3): ending a use never leaves two
overlapping uses on a machine (with a real board over Mosquitto), remote stop says who is logged out, maintenance
has a note, and each shows in the admin's history."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from machines.models import Intervention, Machine, Use
from operations import audit
from telemetry import remote

from .boards import SimBoard, time_passes
from .conftest import Lab

USES = reverse("admin:machines_use_changelist")
N = "aabbccd3"  # Nina, authorized on the laser (machine 1)


def meter_seconds(machine: Machine) -> float:
    machine.refresh_from_db()
    return machine.hours * 3600


def end_from_portal(client: Client, use: Use) -> None:
    form = {"action": "end_now", "_selected_action": [use.pk]}
    assert client.post(USES, form).status_code == 200  # the confirmation page
    assert client.post(USES, {**form, "post": "yes"}).status_code == 302


def assert_no_overlap(machine: Machine) -> None:
    uses = list(Use.objects.filter(machine=machine).order_by("started_at"))
    for before, after in zip(uses, uses[1:], strict=False):
        assert before.ended_at is not None and after.started_at >= before.ended_at, (before, after)


@pytest.mark.django_db(transaction=True)
@pytest.mark.broker
def test_ending_a_use_on_an_online_board_stops_it_there_and_counts_once(
    admin_client: Client, lab: Lab, m1: SimBoard
) -> None:
    assert m1.ask({"action": "startuse", "uid": N})["request_ok"] is True
    use = Use.objects.get()
    end_from_portal(admin_client, use)
    command = json.loads(m1.commands.get(timeout=5))  # the board is asked to log its user out
    assert command == {"request_type": "stop", "uid": N}
    assert Use.objects.get().ended_at is None  # open until the board reports the end
    m1.ask({"action": "inuse", "uid": N, "duration": 20})  # sent before the board handled the stop
    m1.ask({"action": "stopuse", "uid": N, "duration": 25})
    m1.ask({"action": "inuse", "uid": N, "duration": 26})  # a late heartbeat of the same session
    ended = Use.objects.order_by("started_at").first()
    assert ended is not None and ended.duration == 25
    assert_no_overlap(lab.laser)
    assert round(sum(u.duration or 0 for u in Use.objects.all())) == round(meter_seconds(lab.laser))
    assert LogEntry.objects.filter(object_id=str(use.pk), action_flag=CHANGE).exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.broker
def test_ending_a_use_of_an_offline_board_closes_it_and_a_later_inuse_does_not_overlap(
    admin_client: Client, lab: Lab, m1: SimBoard
) -> None:
    assert m1.ask({"action": "startuse", "uid": N})["request_ok"] is True
    time_passes(440)  # the board is silent: offline
    end_from_portal(admin_client, Use.objects.get())
    assert m1.commands.empty()
    first = Use.objects.get()
    assert first.ended_at is not None and 440 <= (first.duration or 0) < 450
    m1.ask({"action": "inuse", "uid": N, "duration": 30})  # back online, still the same session
    assert_no_overlap(lab.laser)
    assert meter_seconds(lab.laser) < 450 + 31  # counted once: not 440 + 470


def test_ending_a_use_is_refused_with_the_reason_when_the_stop_cannot_be_sent(
    admin_client: Client, lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(*args: object) -> None:
        raise remote.BrokerUnavailable()

    monkeypatch.setattr(remote, "_publish", unavailable)
    Machine.objects.filter(pk=lab.laser.pk).update(last_seen=timezone.now())
    use = Use.objects.create(member=lab.normal, machine=lab.laser, started_at=timezone.now(), last_seen=timezone.now())
    form = {"action": "end_now", "_selected_action": [use.pk], "post": "yes"}
    response = admin_client.post(USES, form, follow=True)
    assert "was not ended: The MQTT broker cannot be reached." in response.content.decode()
    assert Use.objects.get().ended_at is None


def test_remote_stop_says_who_is_logged_out_and_is_recorded(
    admin_client: Client, lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[object, ...]] = []
    monkeypatch.setattr(remote, "_publish", lambda *args: sent.append(args))
    now = timezone.now()
    Machine.objects.filter(pk=lab.laser.pk).update(last_seen=now)
    Use.objects.create(member=lab.normal, machine=lab.laser, started_at=now - timedelta(minutes=5), last_seen=now)
    lab.admin.is_staff = lab.admin.is_superuser = True
    lab.admin.save()
    admin_client.force_login(lab.admin)  # Alice has a card
    url = reverse("admin:machines_machine_remote", args=[lab.laser.pk, "stop"])
    page = admin_client.post(url).content.decode()
    assert "Nina Test, on it since" in page and not sent
    assert admin_client.post(url, {"post": "yes"}).status_code == 302
    assert len(sent) == 1
    entry = LogEntry.objects.get(object_id=str(lab.laser.pk), content_type__model="machine")
    assert audit.history_text(entry) == "Remote stop: logged out Nina Test."
    # Stored as a msgid and its parameters: the History page speaks the reader's language, not the actor's.
    history = reverse("admin:machines_machine_history", args=[lab.laser.pk])
    assert "Remote stop: logged out Nina Test." in admin_client.get(history).content.decode()
    admin_client.cookies["django_language"] = "it"
    assert "Arresto remoto: disconnesso Nina Test." in admin_client.get(history).content.decode()


def test_recording_maintenance_from_the_plans_list_is_confirmed_with_a_note(admin_client: Client, lab: Lab) -> None:
    url = reverse("admin:machines_maintenanceplan_changelist")
    form = {"action": "record_now", "_selected_action": [lab.plan.pk]}
    page = admin_client.post(url, form).content.decode()
    assert "Clean the lens" in page and 'name="note"' in page and not Intervention.objects.exists()
    assert admin_client.post(url, {**form, "post": "yes", "note": "lens replaced"}).status_code == 302
    intervention = Intervention.objects.get()
    assert intervention.note == "lens replaced"
    entry = LogEntry.objects.get(action_flag=ADDITION, content_type__model="intervention")
    assert entry.object_id == str(intervention.pk) and "lens replaced" in audit.history_text(entry)
    recent = admin_client.get(reverse("admin:index")).content.decode()
    assert recent  # the index renders with the new entries
