"""The machine history stays true whatever a board sends: untrusted durations, replayed and duplicated sessions,
retained messages, text and offsets the database must never see. Through a real Mosquitto and the real bridge.

Each sequence below is one the firmware can produce (its offline buffer replays startuse/stopuse/maintenance with
``"replay": true``, duplicates them when a publish fails, re-sends a replay whose reply was late) or that two boards
configured with the same machine id produce together. ``time_passes`` moves the recorded past back, since the bridge
judges durations by its own clock.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import paho.mqtt.client as mqtt
import pytest
from django.conf import settings
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as settings_
from hypothesis import strategies as st

from machines import services
from machines.models import Intervention, Machine, Use
from members.models import UnknownCard
from telemetry import ingest
from telemetry import protocol as p
from telemetry.mqtt import Bridge

from .boards import SimBoard, time_passes
from .conftest import Lab
from .services import Broker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.broker]

N, A = "aabbccd3", "aabbccd1"
ALIVE = {"action": "alive", "version": "v1", "ip": "10.0.0.2", "serial": "aa", "heap": "1"}


def meter(machine: Machine) -> float:
    machine.refresh_from_db()
    return machine.hours


def flagged_use(lab: Lab, flag: Use.Flag, *, reported: int, plausible_max: int) -> Use:
    """A closed use of Nina on the laser, recorded now as the bridge records an implausible stopuse."""
    return services.record_flagged_use(
        member=lab.normal,
        machine_id=lab.laser.pk,
        at=timezone.now(),
        reported=reported,
        verdict=services.Implausible(flag, plausible_max),
        closed=True,
        replay=False,
    )


def assert_consistent(*machines: Machine) -> None:
    for machine in machines:
        assert services.meter_differences(machine) == [], machine


# --- 1. durations are untrusted -------------------------------------------------------------------------------


def test_a_ten_year_stopuse_on_a_live_session_is_flagged_not_counted(lab: Lab, m2: SimBoard) -> None:
    """A printer's type without auto-logoff: only our clock bounds the session (opened 10 minutes ago)."""
    lab.printer.type.logoff_minutes = 0
    lab.printer.type.save()
    assert m2.ask({"action": "startuse", "uid": N})["request_ok"] is True
    time_passes(600)
    reply = m2.ask({"action": "stopuse", "uid": N, "duration": 315_360_000})
    assert reply["request_ok"] is True  # the board always gets its one reply
    use = Use.objects.get()
    assert (use.flag, use.duration, use.reported_duration) == (Use.Flag.BEYOND_WINDOW, 0, 315_360_000)
    assert use.plausible_max is not None
    assert 600 <= use.plausible_max <= 600 + services.SLACK_S + 5
    assert use.started_at > timezone.now() - timedelta(minutes=11)  # not in 2016
    assert meter(lab.printer) == 0
    assert_consistent(lab.printer)
    # Staff accept what the backend observed: ten minutes, not ten years.
    services.accept_flagged(use, reported=False)
    assert meter(lab.printer) == pytest.approx(600 / 3600, abs=5 / 3600)
    assert_consistent(lab.printer)


@pytest.mark.parametrize("duration", [10**9, 10**15, 10**30])
def test_huge_durations_with_nothing_open_are_flagged_never_raise(lab: Lab, m1: SimBoard, duration: int) -> None:
    lab.laser.type.logoff_minutes = 120
    lab.laser.type.save()
    assert m1.ask({"action": "inuse", "uid": N, "duration": duration})["request_ok"] is True
    use = Use.objects.get()
    assert use.ended_at is None and use.flag == Use.Flag.BEYOND_LOGOFF  # someone is on it: open, flagged
    assert use.started_at > timezone.now() - timedelta(minutes=1)
    assert m1.ask({"action": "stopuse", "uid": N, "duration": duration + 30})["request_ok"] is True
    use.refresh_from_db()
    assert (use.ended_at is not None, use.duration, use.flag) == (True, 0, Use.Flag.BEYOND_LOGOFF)
    assert use.reported_duration == min(duration + 30, p.MAX_DURATION)
    assert m1.ask({"action": "stopuse", "uid": A, "duration": duration, "replay": True})["request_ok"] is True
    assert Use.objects.filter(member=lab.admin).get().flag == Use.Flag.BEYOND_LOGOFF
    assert meter(lab.laser) == 0
    assert m1.ask({"action": "checkmachine"})["maintenance"] is False
    assert_consistent(lab.laser)


def test_the_auto_logoff_bounds_a_live_session(lab: Lab, m1: SimBoard) -> None:
    lab.laser.type.logoff_minutes = 1
    lab.laser.type.save()
    m1.ask({"action": "startuse", "uid": N})
    time_passes(3600)  # a real hour has passed, but the board logs off after 1 minute
    m1.ask({"action": "stopuse", "uid": N, "duration": 3600})
    use = Use.objects.get()
    assert (use.flag, use.plausible_max) == (Use.Flag.BEYOND_LOGOFF, 60 + services.LOGOFF_SLACK_S)
    m1.ask({"action": "startuse", "uid": N})
    time_passes(61)
    m1.ask({"action": "stopuse", "uid": N, "duration": 61})  # what the board really sends on auto-logoff
    assert Use.objects.filter(flag="").get().duration == 61
    assert meter(lab.laser) == pytest.approx(61 / 3600)


# --- 2. meter and maintenance stay consistent under corrections ---------------------------------------------------


def test_deleting_a_use_after_maintenance_keeps_what_is_due_equal_to_a_recount(lab: Lab, m1: SimBoard) -> None:
    """The issue's sequence: maintenance recorded on an inflated meter, then the bogus use deleted."""
    start = timezone.now() - timedelta(days=30)
    bogus = services.register_use(
        member=lab.normal, machine=lab.laser, started_at=start, ended_at=start + timedelta(hours=87_600)
    )
    services.record_interventions(
        machine=lab.laser, member=lab.staff, plans=[lab.plan], when=timezone.now() - timedelta(days=20)
    )
    services.delete_use(bogus)
    lab.plan.refresh_from_db()
    assert lab.plan.done_at_hours == pytest.approx(0)
    # 150 h of real use on the 10 h plan after the maintenance: due.
    later = timezone.now() - timedelta(days=10)
    services.register_use(member=lab.normal, machine=lab.laser, started_at=later, ended_at=later + timedelta(hours=150))
    assert m1.ask({"action": "checkmachine"})["maintenance"] is True
    assert_consistent(lab.laser)


def test_a_use_that_started_before_a_maintenance_counts_before_it_when_it_closes(lab: Lab, m1: SimBoard) -> None:
    m1.ask({"action": "startuse", "uid": N})
    time_passes(3600)
    services.record_interventions(machine=lab.laser, member=lab.staff, plans=[lab.plan])  # from the portal
    m1.ask({"action": "stopuse", "uid": N, "duration": 3600})
    lab.plan.refresh_from_db()
    assert lab.plan.hours_since(meter(lab.laser)) == pytest.approx(0)
    assert Intervention.objects.get().machine_hours == pytest.approx(1)
    assert_consistent(lab.laser)


def test_corrections_accepts_and_meter_edits_all_equal_a_recount(lab: Lab) -> None:
    now = timezone.now()
    uses = [
        services.register_use(
            member=lab.normal,
            machine=lab.laser,
            started_at=now - timedelta(hours=h + 2),
            ended_at=now - timedelta(hours=h + 1),
        )
        for h in range(0, 20, 2)
    ]
    services.record_manual_intervention(plan=lab.plan, member=lab.staff, when=now - timedelta(hours=9, minutes=30))
    services.correct_use(uses[0], started_at=uses[0].started_at - timedelta(hours=5), ended_at=uses[0].ended_at)
    services.delete_use(uses[3])
    services.set_hour_meter(lab.laser, 500.0)
    assert meter(lab.laser) == pytest.approx(500)
    flagged = flagged_use(lab, Use.Flag.BEYOND_WINDOW, reported=7200, plausible_max=60)
    assert_consistent(lab.laser)
    services.accept_flagged(flagged, reported=True)
    assert meter(lab.laser) == pytest.approx(502)
    previous = Intervention.objects.get()
    services.delete_intervention(previous)
    lab.plan.refresh_from_db()
    assert lab.plan.done_at is None
    assert_consistent(lab.laser)


# --- 3. a session replayed whole counts once; a genuine offline session counts -----------------------------------


def test_a_session_replayed_whole_after_its_live_original_counts_once(lab: Lab, m1: SimBoard) -> None:
    """startuse live, stopuse 7 live (both replies late), then both replayed: one use, 7 s."""
    m1.ask({"action": "startuse", "uid": N})
    time_passes(7)
    m1.ask({"action": "stopuse", "uid": N, "duration": 7})
    time_passes(30)  # the board reconnects at its next 30 s tick
    m1.send(ALIVE)
    assert m1.ask({"action": "startuse", "uid": N, "replay": True})["request_ok"] is True
    assert m1.ask({"action": "stopuse", "uid": N, "duration": 7, "replay": True})["request_ok"] is True
    assert m1.ask({"action": "checkmachine"})["request_ok"] is True
    assert list(Use.objects.values_list("duration", "flag")) == [(7, "")]
    assert meter(lab.laser) == pytest.approx(7 / 3600)


def test_a_replay_interrupted_and_sent_again_with_duplicates_counts_once(lab: Lab, m1: SimBoard) -> None:
    """Offline session; the publish failed (buffered twice); the first replay's reply came late (sent again)."""
    m1.ask({"action": "checkmachine"})
    time_passes(900)
    m1.send(ALIVE)
    for payload in (
        {"action": "startuse", "uid": N, "replay": True},
        {"action": "startuse", "uid": N, "replay": True},
        {"action": "stopuse", "uid": N, "duration": 300, "replay": True},
    ):
        m1.ask(payload)
    time_passes(20)  # the reply to that stopuse was late: the board reconnects and sends its buffer again
    m1.send(ALIVE)
    for payload in (
        {"action": "stopuse", "uid": N, "duration": 300, "replay": True},
        {"action": "stopuse", "uid": N, "duration": 300, "replay": True},
    ):
        m1.ask(payload)
    m1.ask({"action": "checkmachine"})
    use = Use.objects.get()
    assert (use.duration, use.replay, use.flag) == (300, True, "")
    assert meter(lab.laser) == pytest.approx(300 / 3600)


def test_two_boards_with_the_same_id_count_a_session_once(lab: Lab, bridge: Bridge, broker: Broker) -> None:
    """A second board configured with machine id 1 replays what the first sent live."""
    first, second = SimBoard(broker.port, 1), SimBoard(broker.port, 1)

    def send(board: SimBoard, payload: dict) -> None:
        board.send(payload)
        for each in (first, second):  # the reply reaches both boards
            each.replies.get(timeout=2)

    try:
        send(first, {"action": "checkmachine"})
        send(first, {"action": "startuse", "uid": N})
        time_passes(8)
        send(first, {"action": "stopuse", "uid": N, "duration": 8})
        send(second, {"action": "startuse", "uid": N, "replay": True})
        send(second, {"action": "stopuse", "uid": N, "duration": 8, "replay": True})
    finally:
        first.close()
        second.close()
    assert list(Use.objects.values_list("duration", flat=True)) == [8]
    assert meter(lab.laser) == pytest.approx(8 / 3600)


def test_sessions_of_one_outage_are_laid_end_to_end_before_now(lab: Lab, m1: SimBoard) -> None:
    m1.ask({"action": "checkmachine"})
    time_passes(1800)
    m1.send(ALIVE)
    for uid, seconds in ((A, 300), (N, 200), (A, 100)):
        m1.ask({"action": "startuse", "uid": uid, "replay": True})
        m1.ask({"action": "stopuse", "uid": uid, "duration": seconds, "replay": True})
    uses = list(Use.objects.order_by("started_at"))
    assert [(u.member_id, u.duration) for u in uses] == [(lab.admin.pk, 300), (lab.normal.pk, 200), (lab.admin.pk, 100)]
    for before, after in zip(uses, uses[1:], strict=False):
        assert before.ended_at is not None
        assert before.ended_at <= after.started_at  # one session at a time
    assert uses[-1].ended_at is not None
    assert uses[-1].ended_at <= timezone.now()
    assert meter(lab.laser) == pytest.approx(600 / 3600)
    assert_consistent(lab.laser)


def test_a_replayed_session_longer_than_the_silence_is_flagged(lab: Lab, m1: SimBoard) -> None:
    m1.ask({"action": "checkmachine"})
    time_passes(120)  # silent for two minutes: a replayed 50-minute session cannot have happened in them
    m1.send(ALIVE)
    m1.ask({"action": "startuse", "uid": N, "replay": True})
    assert m1.ask({"action": "stopuse", "uid": N, "duration": 3000, "replay": True})["request_ok"] is True
    use = Use.objects.get()
    assert (use.flag, use.duration, use.reported_duration) == (Use.Flag.BEYOND_WINDOW, 0, 3000)
    assert meter(lab.laser) == 0


def test_the_same_duration_again_after_the_board_spoke_live_is_a_new_session(lab: Lab, m1: SimBoard) -> None:
    m1.ask({"action": "startuse", "uid": N})
    time_passes(65)
    m1.ask({"action": "stopuse", "uid": N, "duration": 65})
    time_passes(60)
    m1.ask({"action": "checkmachine"})  # the board is online and idle: the next session is another one
    time_passes(600)
    m1.send(ALIVE)
    m1.ask({"action": "startuse", "uid": N, "replay": True})
    m1.ask({"action": "stopuse", "uid": N, "duration": 65, "replay": True})
    assert list(Use.objects.order_by("started_at").values_list("duration", "replay")) == [(65, False), (65, True)]
    assert meter(lab.laser) == pytest.approx(130 / 3600)


def test_a_replayed_start_of_a_running_session_is_opened_by_the_inuse_that_follows(lab: Lab, m1: SimBoard) -> None:
    m1.ask({"action": "checkmachine"})
    time_passes(600)
    m1.send(ALIVE)
    m1.ask({"action": "startuse", "uid": N, "replay": True})
    m1.ask({"action": "checkmachine"})
    m1.ask({"action": "inuse", "uid": N, "duration": 400})
    use = Use.objects.get()
    assert use.ended_at is None and use.flag == ""
    assert abs((timezone.now() - timedelta(seconds=400) - use.started_at).total_seconds()) < 5


# --- 4. retained messages -------------------------------------------------------------------------------------


def test_a_retained_request_is_handled_once_live_and_ignored_on_every_resubscription(
    lab: Lab, broker: Broker, settings
) -> None:
    settings.MQTT = {**settings.MQTT, "HOST": "127.0.0.1", "PORT": broker.port, "TOPIC": "machine"}
    attacker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"x-{uuid.uuid4().hex[:6]}")
    attacker.connect("127.0.0.1", broker.port)
    attacker.loop_start()
    stop = json.dumps({"action": "stopuse", "uid": N, "duration": 315_360_000})
    try:
        attacker.publish("machine/1", stop, qos=1, retain=True).wait_for_publish(5)
        for _ in range(2):  # each bridge start subscribes again and is handed the stored copy
            bridge = Bridge(client_id=f"test-bridge-{uuid.uuid4().hex[:8]}", housekeeping_every=3600)
            bridge.start()
            try:
                assert bridge.subscribed.wait(10)
                deadline = time.monotonic() + 5
                while bridge.stats["Retained"] < 1 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert bridge.stats["Retained"] == 1
            finally:
                bridge.stop()
    finally:
        attacker.publish("machine/1", b"", qos=1, retain=True).wait_for_publish(5)  # clear it for other tests
        attacker.disconnect()
        attacker.loop_stop()
    assert not Use.objects.exists()
    assert meter(lab.laser) == 0


# --- 6. smaller ------------------------------------------------------------------------------------------------


def test_text_with_nul_or_control_characters_never_reaches_the_database(lab: Lab, bridge: Bridge, m1: SimBoard) -> None:
    for field in ("version", "serial"):
        with pytest.raises(p.Malformed, match="control characters"):
            p.parse_payload(json.dumps({**ALIVE, field: "v1\u0000x"}).encode())
    dropped = bridge.stats["Dropped"]
    m1.assert_no_reply(json.dumps({**ALIVE, "version": "v1\u0000"}))
    assert bridge.stats["Dropped"] == dropped + 1 and bridge.stats["Errors"] == 0


def test_a_huge_synccache_offset_is_refused_as_malformed(lab: Lab, bridge: Bridge, m1: SimBoard) -> None:
    with pytest.raises(p.Malformed, match="offset"):
        p.parse_payload(json.dumps({"action": "synccache", "offset": 10**30}).encode())
    m1.assert_no_reply({"action": "synccache", "offset": 10**12})
    assert bridge.stats["Errors"] == 0
    assert m1.ask({"action": "synccache", "offset": p.MAX_SYNC_OFFSET})["cards"] == []


def test_an_unknown_card_swiped_in_a_loop_keeps_one_row_per_machine(lab: Lab, m1: SimBoard, m2: SimBoard) -> None:
    for _ in range(5):
        m1.ask({"action": "checkuser", "uid": "deadbeef"})
    m2.ask({"action": "checkuser", "uid": "deadbeef"})
    for _ in range(300):  # a flood, straight through the request handler
        ingest.process(1, p.CheckUser(uid="deadbeef"))
    rows = {(c.machine_id, c.count) for c in UnknownCard.objects.all()}
    assert rows == {(1, 305), (2, 1)}
    card = UnknownCard.objects.get(machine_id=1)
    assert card.first_seen <= card.seen_at


def test_recount_meters_check_passes_on_a_consistent_lab_and_fails_on_a_tampered_one(lab: Lab) -> None:
    from django.core.management import CommandError, call_command

    services.register_use(
        member=lab.normal, machine=lab.laser, started_at=timezone.now() - timedelta(hours=2), ended_at=timezone.now()
    )
    call_command("recount_meters", "--check")
    Machine.objects.filter(pk=lab.laser.pk).update(hours=99)
    with pytest.raises(CommandError, match="1 machine"):
        call_command("recount_meters", "--check")
    call_command("recount_meters")
    assert meter(lab.laser) == pytest.approx(2)


def test_settings_give_the_bridge_a_deadline_inside_the_board_timeout() -> None:
    assert 0 < settings.BRIDGE_REPLY_DEADLINE < 2.0


# --- 2 (property): whatever staff and boards do, the stored counters equal a recount -----------------------------

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("session"), st.integers(1, 20_000)),
        st.tuples(st.just("replayed"), st.integers(1, 20_000)),
        st.tuples(st.just("maintenance"), st.integers(0, 30)),
        st.tuples(st.just("correct"), st.integers(0, 30)),
        st.tuples(st.just("delete"), st.integers(0, 30)),
        st.tuples(st.just("undo_maintenance"), st.integers(0, 30)),
        st.tuples(st.just("meter"), st.integers(0, 1000)),
        st.tuples(st.just("accept"), st.integers(0, 30)),
    ),
    min_size=1,
    max_size=12,
)


@settings_(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS)
def test_any_sequence_of_board_and_staff_actions_leaves_counters_equal_to_a_recount(lab: Lab, operations) -> None:
    Use.objects.all().delete()
    Intervention.objects.all().delete()
    Machine.objects.filter(pk=lab.laser.pk).update(hours=0, hours_offset=0, heard_live_at=None)
    lab.plan.__class__.objects.filter(pk=lab.plan.pk).update(done_at=None, done_at_hours=0)
    now = timezone.now() - timedelta(days=60)
    for action, value in operations:
        now += timedelta(seconds=value + 120)
        uses = list(Use.objects.order_by("pk"))
        if action == "session":
            ingest.process(1, p.StartUse(uid=N), now=now - timedelta(seconds=value))
            ingest.process(1, p.StopUse(uid=N, duration=value), now=now)
        elif action == "replayed":
            ingest.process(1, p.StopUse(uid=N, duration=value, replay=True), now=now)
        elif action == "maintenance":
            services.record_interventions(machine=lab.laser, member=lab.staff, plans=[lab.plan], when=now)
        elif action == "correct" and uses:
            use = uses[value % len(uses)]
            if use.ended_at is not None:
                services.correct_use(use, started_at=use.started_at - timedelta(minutes=value), ended_at=use.ended_at)
        elif action == "delete" and uses:
            services.delete_use(uses[value % len(uses)])
        elif action == "undo_maintenance" and (done := list(Intervention.objects.order_by("pk"))):
            services.delete_intervention(done[value % len(done)])
        elif action == "meter":
            services.set_hour_meter(lab.laser, float(value))
        elif action == "accept" and (flagged := list(Use.objects.exclude(flag="").filter(ended_at__isnull=False))):
            services.accept_flagged(flagged[value % len(flagged)], reported=bool(value % 2))
        assert_consistent(lab.laser)


def test_the_dashboard_tells_staff_about_uses_to_review(lab: Lab, admin_client) -> None:
    assert "implausible duration" not in admin_client.get("/admin/").content.decode()
    flagged_use(lab, Use.Flag.BEYOND_LOGOFF, reported=10**9, plausible_max=86_520)
    page = admin_client.get("/admin/").content.decode()
    assert "1 use has an implausible duration" in page and "?open=flagged" in page
    listing = admin_client.get("/admin/machines/use/?open=flagged").content.decode()
    assert "Longer than the auto-logoff" in listing or "longer than the auto-logoff" in listing
