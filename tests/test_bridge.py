"""The board bridge end to end: simulated boards (real paho clients) → real Mosquitto → the real bridge → the DB.

One test per scenario of docs/protocol.md §7 that concerns the backend (S1–S24).
"""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from machines.models import Intervention, Machine, Use
from members.models import UnknownCard
from telemetry.models import Board
from telemetry.mqtt import Bridge

from .boards import SimBoard, time_passes
from .conftest import Lab
from .services import Broker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.broker]

N, A, S, U, D = "aabbccd3", "aabbccd1", "aabbccd2", "aabbccd4", "aabbccd5"


def use_of(member) -> Use:
    return Use.objects.get(member=member)


def test_s1_alive_gets_no_reply_and_records_the_board(lab: Lab, m1: SimBoard) -> None:
    m1.assert_no_reply(
        {"action": "alive", "version": "rev0,v1.0.4", "ip": "192.168.1.50", "serial": "dcda0c419794", "heap": "201344"}
    )
    board = Board.objects.get(machine=lab.laser)
    assert (board.firmware, board.ip_address, board.serial, board.free_heap) == (
        "rev0,v1.0.4",
        "192.168.1.50",
        "dcda0c419794",
        201344,
    )
    lab.laser.refresh_from_db()
    assert lab.laser.last_seen is not None and lab.laser.is_online()


def test_s2_checkmachine_returns_the_configuration(lab: Lab, m1: SimBoard) -> None:
    reply = m1.ask({"action": "checkmachine"})
    assert reply == {
        "request_ok": True,
        "is_valid": True,
        "maintenance": False,
        "allowed": True,
        "name": "LASER 1",
        "logoff": 1440,
        "type": lab.laser.type_id,
        "grace": 2,
        "description": "",
    }


def test_s3_authorized_use_is_recorded_once_with_the_board_duration(lab: Lab, m1: SimBoard) -> None:
    reply = m1.ask({"action": "checkuser", "uid": N})
    assert (reply["request_ok"], reply["is_valid"], reply["level"], reply["name"]) == (True, True, 1, "Nina")
    assert m1.ask({"action": "startuse", "uid": N})["request_ok"] is True
    assert m1.ask({"action": "checkmachine"})["request_ok"] is True
    assert m1.ask({"action": "inuse", "uid": N, "duration": 30})["request_ok"] is True
    time_passes(65)  # the board reports 65 s: let them pass
    assert m1.ask({"action": "stopuse", "uid": N, "duration": 65})["request_ok"] is True
    use = use_of(lab.normal)
    assert use.ended_at is not None
    assert (use.duration, use.replay, use.ended_at - use.started_at) == (65, False, timedelta(seconds=65))
    lab.laser.refresh_from_db()
    assert lab.laser.hours == pytest.approx(65 / 3600)


def test_s4_privileged_user_is_staff_without_authorization(lab: Lab, m1: SimBoard) -> None:
    reply = m1.ask({"action": "checkuser", "uid": A})
    assert (reply["is_valid"], reply["level"]) == (True, 2)


def test_m2_maintenance_role_is_staff_level_on_the_board(lab: Lab, m1: SimBoard) -> None:
    reply = m1.ask({"action": "checkuser", "uid": S})
    assert (reply["is_valid"], reply["level"]) == (True, 2)


def test_s5_unauthorized_user_is_denied_not_unknown(lab: Lab, m1: SimBoard) -> None:
    reply = m1.ask({"action": "checkuser", "uid": U})
    assert (reply["request_ok"], reply["is_valid"], reply["level"]) == (True, False, 0)
    assert not Use.objects.exists() and not UnknownCard.objects.exists()


def test_s6_unknown_card_is_denied_and_recorded(lab: Lab, m1: SimBoard) -> None:
    reply = m1.ask({"action": "checkuser", "uid": "deadbeef"})
    assert (reply["request_ok"], reply["is_valid"], reply["level"]) == (True, False, 0)
    assert list(UnknownCard.objects.values_list("uid", "machine_id")) == [("deadbeef", 1)]


def test_s7_disabled_user_is_denied_and_cannot_open_a_use(lab: Lab, m1: SimBoard) -> None:
    reply = m1.ask({"action": "checkuser", "uid": D})
    assert (reply["request_ok"], reply["is_valid"], reply["level"]) == (True, False, 0)
    assert m1.ask({"action": "startuse", "uid": D})["request_ok"] is False
    m1.ask({"action": "inuse", "uid": D, "duration": 30})
    m1.ask({"action": "stopuse", "uid": D, "duration": 60})
    assert not Use.objects.exists()


def test_s8_blocked_machine_admits_only_authorize_all(lab: Lab, m1: SimBoard) -> None:
    Machine.objects.filter(pk=1).update(blocked=True)
    assert m1.ask({"action": "checkmachine"})["allowed"] is False
    assert m1.ask({"action": "checkuser", "uid": N})["is_valid"] is False
    reply = m1.ask({"action": "checkuser", "uid": A})
    assert (reply["is_valid"], reply["level"]) == (True, 2)
    assert not Use.objects.exists()


def test_s9_type_without_authorization_admits_everyone(lab: Lab, m2: SimBoard) -> None:
    reply = m2.ask({"action": "checkuser", "uid": U})
    assert (reply["is_valid"], reply["level"]) == (True, 1)
    m2.ask({"action": "startuse", "uid": U})
    m2.ask({"action": "stopuse", "uid": U, "duration": 10})
    assert use_of(lab.unauthorized).duration == 10


def make_maintenance_due(lab: Lab) -> None:
    Machine.objects.filter(pk=1).update(hours=10.5)


def test_s10_maintenance_due_is_announced(lab: Lab, m1: SimBoard) -> None:
    make_maintenance_due(lab)
    reply = m1.ask({"action": "checkmachine"})
    assert (reply["maintenance"], reply["description"]) == (True, "pulire lente")
    reply = m1.ask({"action": "checkuser", "uid": N})
    assert (reply["is_valid"], reply["level"]) == (True, 1)
    assert not Intervention.objects.exists()


def test_s11_maintenance_recorded_by_a_privileged_user(lab: Lab, m1: SimBoard) -> None:
    make_maintenance_due(lab)
    assert m1.ask({"action": "checkuser", "uid": A})["level"] == 2
    assert m1.ask({"action": "maintenance", "uid": A})["request_ok"] is True
    assert m1.ask({"action": "startuse", "uid": A})["request_ok"] is True
    assert m1.ask({"action": "checkmachine"})["maintenance"] is False
    assert list(Intervention.objects.values_list("plan", "member", "machine", "replay")) == [
        (lab.plan.pk, lab.admin.pk, 1, False)
    ]
    assert Use.objects.get(member=lab.admin).ended_at is None
    # The board replays the maintenance it thought unanswered: nothing is due any more, nothing is recorded.
    assert m1.ask({"action": "maintenance", "uid": A, "replay": True})["request_ok"] is True
    assert Intervention.objects.count() == 1


def test_maintenance_replay_flag_is_stored(lab: Lab, m1: SimBoard) -> None:
    make_maintenance_due(lab)
    assert m1.ask({"action": "maintenance", "uid": S, "replay": True})["request_ok"] is True
    assert Intervention.objects.get().replay is True


def test_s12_maintenance_from_a_normal_role_is_refused(lab: Lab, m1: SimBoard) -> None:
    make_maintenance_due(lab)
    reply = m1.ask({"action": "maintenance", "uid": N})
    assert reply == {"request_ok": False, "message": "Not authorized"}
    assert not Intervention.objects.exists()


def test_s13_auto_logoff(lab: Lab, m1: SimBoard) -> None:
    lab.laser.type.logoff_minutes = 1
    lab.laser.type.save()
    assert m1.ask({"action": "checkmachine"})["logoff"] == 1
    m1.ask({"action": "checkuser", "uid": N})
    m1.ask({"action": "startuse", "uid": N})
    time_passes(61)
    m1.ask({"action": "stopuse", "uid": N, "duration": 61})
    assert use_of(lab.normal).duration == 61


def test_s14_offline_session_replayed_is_one_use(lab: Lab, m1: SimBoard) -> None:
    m1.ask({"action": "checkmachine"})
    time_passes(600)  # the board was offline for 10 minutes, then reconnects: alive, its buffer, checkmachine
    m1.send({"action": "alive", "version": "v1", "ip": "10.0.0.2", "serial": "aa", "heap": "1"})
    assert m1.ask('{"action":"startuse", "uid":"aabbccd3", "replay":true}') == {"request_ok": True, "message": ""}
    assert m1.ask('{"action":"stopuse", "uid":"aabbccd3","duration":300, "replay":true}')["request_ok"] is True
    assert m1.ask({"action": "checkmachine"})["request_ok"] is True
    use = use_of(lab.normal)
    assert (use.replay, use.duration) == (True, 300)
    assert use.ended_at is not None
    assert use.ended_at <= timezone.now() + timedelta(seconds=1)  # the session lies in the past, not the future
    lab.laser.refresh_from_db()
    assert lab.laser.hours == pytest.approx(300 / 3600)


def test_s14_stop_replayed_without_its_start_creates_the_use(lab: Lab, m1: SimBoard) -> None:
    m1.ask({"action": "stopuse", "uid": N, "duration": 120, "replay": True})
    use = use_of(lab.normal)
    assert (use.duration, use.replay, use.ended_at is not None) == (120, True, True)


def test_s15_duplicate_start_is_one_open_use(lab: Lab, m1: SimBoard) -> None:
    m1.ask({"action": "startuse", "uid": N})
    m1.assert_no_reply({"action": "alive", "version": "v1", "ip": "10.0.0.2", "serial": "aa", "heap": "1"})
    m1.ask({"action": "startuse", "uid": N, "replay": True})
    use = use_of(lab.normal)
    assert use.ended_at is None


def test_s16_duplicate_stop_records_nothing_more(lab: Lab, m1: SimBoard) -> None:
    m1.ask({"action": "startuse", "uid": N})
    time_passes(65)
    assert m1.ask({"action": "stopuse", "uid": N, "duration": 65})["request_ok"] is True
    assert m1.ask({"action": "stopuse", "uid": N, "duration": 65})["request_ok"] is True
    assert m1.ask({"action": "stopuse", "uid": N, "duration": 65, "replay": True})["request_ok"] is True
    assert use_of(lab.normal).duration == 65
    lab.laser.refresh_from_db()
    assert lab.laser.hours == pytest.approx(65 / 3600)


def test_s17_inuse_without_start_opens_the_use(lab: Lab, m1: SimBoard) -> None:
    assert m1.ask({"action": "inuse", "uid": N, "duration": 120})["request_ok"] is True
    use = use_of(lab.normal)
    assert use.ended_at is None
    assert abs((timezone.now() - timedelta(seconds=120) - use.started_at).total_seconds()) < 5
    m1.ask({"action": "inuse", "uid": N, "duration": 150})
    m1.ask({"action": "stopuse", "uid": N, "duration": 180})
    assert Use.objects.get().duration == 180


def test_s18_reboot_mid_session_closes_the_old_use_at_its_last_heartbeat(lab: Lab, m1: SimBoard) -> None:
    m1.ask({"action": "startuse", "uid": N})
    m1.ask({"action": "inuse", "uid": N, "duration": 30})
    # Pretend the last heartbeat came 40 s after the start.
    use = use_of(lab.normal)
    Use.objects.filter(pk=use.pk).update(last_seen=use.started_at + timedelta(seconds=40))
    m1.assert_no_reply({"action": "alive", "version": "v1", "ip": "10.0.0.2", "serial": "aa", "heap": "1"})
    m1.ask({"action": "checkuser", "uid": A})
    m1.ask({"action": "startuse", "uid": A})
    old = use_of(lab.normal)
    assert (old.ended_at is not None, old.duration) == (True, 40)
    assert use_of(lab.admin).ended_at is None
    lab.laser.refresh_from_db()
    assert lab.laser.hours == pytest.approx(40 / 3600)


def test_s19_orphans_are_closed_by_the_bridge_housekeeping(lab: Lab, bridge: Bridge, m1: SimBoard) -> None:
    start = timezone.now() - timedelta(hours=3)
    orphan = Use.objects.create(
        member=lab.normal, machine=lab.laser, started_at=start, last_seen=start + timedelta(minutes=50)
    )
    fresh = Use.objects.create(member=lab.admin, machine=lab.printer, started_at=start, last_seen=timezone.now())
    bridge.housekeeping_every = 0
    bridge.tick()
    deadline = time.monotonic() + 5  # the housekeeping runs on a worker of its own
    while Use.objects.get(pk=orphan.pk).ended_at is None and time.monotonic() < deadline:
        time.sleep(0.05)
    orphan.refresh_from_db()
    fresh.refresh_from_db()
    assert orphan.duration == 50 * 60 + 1 and fresh.ended_at is None


def test_s20_remote_start_publishes_a_request_for_an_online_machine(lab: Lab, m1: SimBoard, settings) -> None:
    from telemetry.remote import MachineOffline, NoActiveCard, send_remote_command

    with pytest.raises(MachineOffline):
        send_remote_command(lab.laser, "start", lab.normal)
    m1.ask({"action": "checkmachine"})
    send_remote_command(lab.laser, "start", lab.normal)
    assert m1.commands.get(timeout=2) == b'{"request_type": "start", "uid": "aabbccd3"}'
    send_remote_command(lab.laser, "stop", lab.normal)
    assert m1.commands.get(timeout=2) == b'{"request_type": "stop", "uid": "aabbccd3"}'
    lab.unauthorized.cards.update(active=False)
    with pytest.raises(NoActiveCard) as exc:
        send_remote_command(lab.laser, "start", lab.unauthorized)
    assert "card" in str(exc.value)


def test_s21_stop_on_an_idle_machine_records_nothing(lab: Lab, m1: SimBoard) -> None:
    m1.ask({"action": "stopuse", "uid": N, "duration": 0})
    m1.ask({"action": "stopuse", "uid": "00000000", "duration": 0})
    assert not Use.objects.exists()
    lab.laser.refresh_from_db()
    assert lab.laser.hours == 0


def test_s22_heartbeats_keep_the_machine_online(lab: Lab, m1: SimBoard, settings) -> None:
    m1.ask({"action": "checkmachine"})
    lab.laser.refresh_from_db()
    assert lab.laser.is_online()
    assert not lab.laser.is_online(timezone.now() + timedelta(seconds=settings.ONLINE_SECONDS + 1))


def test_s23_unknown_machine_is_refused_and_nothing_is_recorded(lab: Lab, bridge: Bridge, broker: Broker) -> None:
    board = SimBoard(broker.port, 99)
    try:
        for request in ({"action": "checkmachine"}, {"action": "checkuser", "uid": "deadbeef"}):
            assert board.ask(request) == {"request_ok": False, "message": "Invalid machine ID"}
        assert board.ask({"action": "startuse", "uid": N})["request_ok"] is False
        board.assert_no_reply({"action": "alive", "version": "v1", "ip": "10.0.0.9", "serial": "aa", "heap": "1"})
    finally:
        board.close()
    assert not UnknownCard.objects.exists() and not Use.objects.exists() and not Board.objects.exists()


def test_s24_malformed_input_is_dropped_and_service_continues(lab: Lab, bridge: Bridge, m1: SimBoard, broker) -> None:
    for payload in (
        b'{"action":"checkuser", "uid":',
        b'{"action":"reboot"}',
        b'{"action":"checkuser"}',
        b"not json",
        b"\xff\xfe\xfd",
        b'{"action":"inuse","uid":"aabbccd3","duration":"x"}',
        b"{" * 100_000,
    ):
        m1.assert_no_reply(payload)
    other = SimBoard(broker.port, "abc")
    try:
        other.send({"action": "checkmachine"})
    finally:
        other.close()
    assert m1.ask({"action": "checkuser", "uid": "AABBCCD1"})["level"] == 2  # M8: case-insensitive
    assert bridge.stats["Dropped"] >= 8
    assert not Use.objects.exists() and not UnknownCard.objects.exists()


def test_synccache_is_answered_in_pages_that_fit(lab: Lab, m1: SimBoard) -> None:
    reply = m1.ask({"action": "synccache"})
    cards = {c["uid"]: c["level"] for c in reply["cards"]}
    assert cards == {A: 2, S: 2, N: 1} and reply["next"] is None


def test_a_locked_database_answers_request_ok_false_then_recovers(lab: Lab, m1: SimBoard) -> None:
    assert m1.ask({"action": "checkuser", "uid": N})["is_valid"] is True
    locker = sqlite3.connect(connection.settings_dict["NAME"], timeout=5)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        # A state change cannot be recorded: "cannot decide", the board falls back to its cache (and replays).
        assert m1.ask({"action": "startuse", "uid": N})["request_ok"] is False
        # Reads are not blocked by a writer (WAL): a swipe is still answered from the database.
        assert m1.ask({"action": "checkuser", "uid": N})["is_valid"] is True
    finally:
        locker.rollback()
        locker.close()
    assert not Use.objects.exists()
    assert m1.ask({"action": "startuse", "uid": N})["request_ok"] is True
    assert Use.objects.filter(member=lab.normal, ended_at__isnull=True).count() == 1
