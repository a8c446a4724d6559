"""The safety workflows at the machine, end to end (docs/protocol.md §9): simulated boards that act on the replies as
the firmware does (tests/boards.py ``FirmwareBoard``: one request in flight, the 2 s deadline, exactly one reply, the
reply fields' types) → real Mosquitto → the real bridge → the database.

(a) training that expires; (b) sign-off at the machine; (c) fault reports; (d) checks after use; (e) a reason for
every refusal.

The sequences of docs/protocol.md §3.5 and their outcome on a type with a check after use (§9.6), as tested below:

- ``stopuse N 45`` live → one use, one open check; the same ``stopuse`` again live, then replayed → copies: still one;
- offline session ``startuse``/``stopuse 100`` replayed, the pair sent twice → one use, one check;
- a reboot during S's session, then A's ``checkuser``/``startuse`` → S's orphan closed at its heartbeat, one check;
- ``maintenance`` replayed → closes no check and no fault (the hold happened at an unknown time); live at level 2
  → closes them all; level 1 → "Not authorized";
- staff's own session after the hold → a new check at its ``stopuse``;
- a fault reported during a session → its ``inuse`` and ``stopuse`` recorded as usual; the lock applies at the next
  login, and holds across a bridge restart, a broker restart and a board reboot.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import F
from django.utils import timezone
from pytest_django import Settings

from machines import safety
from machines.models import (
    Authorization,
    FaultReport,
    Machine,
    MachineCheck,
    MachineType,
    Refusal,
    TrainingArm,
    Use,
)
from members.models import Card, Member, Role
from telemetry import ingest
from telemetry import protocol as p
from telemetry.mqtt import Bridge

from .boards import FirmwareBoard, reconnect_delay, time_passes
from .conftest import Lab
from .services import Broker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.broker]

A, S, N, U, D = "aabbccd1", "aabbccd2", "aabbccd3", "aabbccd4", "aabbccd5"
V = "aabbccd6"  # a second member without authorization
UNKNOWN = "deadbeef"
Reason = Refusal.Reason


@pytest.fixture
def board(bridge: Bridge, broker: Broker) -> Iterator[FirmwareBoard]:
    laser = FirmwareBoard(broker.port, 1)
    laser.check_machine()  # boot: the first checkmachine
    yield laser
    laser.close()


@pytest.fixture
def vera(lab: Lab) -> Member:
    member = Member.objects.create_user(email="vera@lab.test", first_name="Vera", role=Role.objects.get(name="USER"))
    Card.objects.create(uid=V, member=member)
    return member


def reasons(**filters: object) -> list[str]:
    return list(Refusal.objects.filter(**filters).order_by("at", "pk").values_list("reason", flat=True))


def assert_quiet(board: FirmwareBoard) -> None:
    """No stray reply is left over (exactly one reply per request)."""
    assert board.replies.empty(), board.replies.queue[0]


# --- (a) Training lifecycle -----------------------------------------------------------------------------------


def test_a_expired_training_is_refused_at_the_next_swipe_with_its_reason(lab: Lab, board: FirmwareBoard) -> None:
    assert board.swipe(N) == "Use started"
    time_passes(40)
    board.log_out(40)
    yesterday = timezone.localdate() - timedelta(days=1)
    safety.grant(lab.normal, lab.laser, by=lab.staff, expiry=Authorization.Expiry.ON_DATE, on_date=yesterday)
    assert board.swipe(N) == "Unknown card"  # the board's screen for any refusal
    assert reasons(member=lab.normal) == [Reason.EXPIRED]
    assert Use.objects.filter(member=lab.normal).count() == 1
    assert_quiet(board)


def test_a_idle_days_training_is_kept_alive_by_use_and_not_revived_once_lapsed(lab: Lab, board: FirmwareBoard) -> None:
    trained = timezone.now() - timedelta(days=29)
    safety.grant(lab.normal, lab.laser, by=lab.staff, now=trained, expiry=Authorization.Expiry.IDLE_DAYS, days=30)
    authorization = Authorization.objects.get(member=lab.normal, machine=lab.laser)
    assert authorization.expires_at == trained + timedelta(days=30)  # one day left
    assert board.swipe(N) == "Use started"
    authorization.refresh_from_db()
    use = Use.objects.get(member=lab.normal)
    assert authorization.last_used_at == use.started_at
    assert authorization.expires_at == use.started_at + timedelta(days=30)  # counts from the latest use
    time_passes(20)
    board.log_out(20)

    # Lapsed: an offline session replayed later is recorded (the machine ran) but does not revive the training.
    Authorization.objects.filter(pk=authorization.pk).update(expires_at=timezone.now() - timedelta(minutes=5))
    lapsed = Authorization.objects.get(pk=authorization.pk).expires_at
    time_passes(600)
    assert board.request({"action": "startuse", "uid": N, "replay": True})["request_ok"] is True
    assert board.request({"action": "stopuse", "uid": N, "duration": 120, "replay": True})["request_ok"] is True
    assert Use.objects.filter(member=lab.normal, replay=True, duration=120).count() == 1
    assert Authorization.objects.get(pk=authorization.pk).expires_at == lapsed
    assert board.swipe(N) == "Unknown card"
    assert reasons(member=lab.normal) == [Reason.EXPIRED]


# --- (b) Sign-off at the machine ------------------------------------------------------------------------------


def test_b_armed_machine_trains_the_next_unauthorized_card_on_that_swipe_and_only_it(
    lab: Lab, vera: Member, board: FirmwareBoard
) -> None:
    lab.laser.trainers.add(lab.staff)
    safety.arm(lab.laser, lab.staff)
    assert board.swipe(U) == "Use started"  # let in on the same swipe, level 1
    assert board.level == 1
    authorization = Authorization.objects.get(member=lab.unauthorized, machine=lab.laser)
    assert authorization.trained_by_id == lab.staff.pk
    arm = TrainingArm.objects.get()
    assert (arm.trainee_id, arm.used_at is not None) == (lab.unauthorized.pk, True)
    assert Use.objects.filter(member=lab.unauthorized, ended_at__isnull=True).count() == 1
    assert reasons() == []  # the trainee's swipe is not a refusal
    time_passes(30)
    board.log_out(30)

    assert board.swipe(V) == "Unknown card"  # the arming ended with the first card
    assert not Authorization.objects.filter(member=vera).exists()
    assert reasons(member=vera) == [Reason.NOT_AUTHORIZED]
    assert_quiet(board)


def test_b_an_arming_past_its_60_seconds_trains_nobody(lab: Lab, board: FirmwareBoard) -> None:
    lab.laser.trainers.add(lab.staff)
    safety.arm(lab.laser, lab.staff, now=timezone.now() - timedelta(seconds=safety.ARM_SECONDS + 1))
    assert board.swipe(U) == "Unknown card"
    assert not Authorization.objects.filter(member=lab.unauthorized).exists()
    assert TrainingArm.objects.get().used_at is None
    assert reasons(member=lab.unauthorized) == [Reason.NOT_AUTHORIZED]


def test_b_an_expired_training_is_renewed_by_the_sign_off(lab: Lab, board: FirmwareBoard) -> None:
    lab.laser.trainers.add(lab.staff)
    Authorization.objects.filter(member=lab.normal, machine=lab.laser).update(
        expiry=Authorization.Expiry.AFTER_DAYS, expiry_days=30, expires_at=timezone.now() - timedelta(days=1)
    )
    safety.arm(lab.laser, lab.staff)
    assert board.swipe(N) == "Use started"
    authorization = Authorization.objects.get(member=lab.normal, machine=lab.laser)
    assert authorization.trained_by_id == lab.staff.pk and not authorization.is_expired()


def test_b_two_bridges_racing_one_arming_train_one_card(lab: Lab, vera: Member) -> None:
    """Two bridge workers (each its own database connection) take two refused cards on one armed machine at the
    same moment: one card is trained, the other refused and recorded. (Their transactions serialise on the
    machine's row; tests/test_safety_uses.py proves the arming's conditional UPDATE against a stale read.)"""
    lab.laser.trainers.add(lab.staff)
    Machine.objects.filter(pk=lab.laser.pk).update(last_seen=timezone.now())
    safety.arm(lab.laser, lab.staff)
    start = threading.Barrier(2)
    replies: dict[str, p.Reply | None] = {}

    def bridge_worker(uid: str) -> None:
        try:
            start.wait(5)
            replies[uid] = ingest.process(1, p.CheckUser(uid=uid)).reply
        finally:
            connection.close()

    workers = [threading.Thread(target=bridge_worker, args=(uid,)) for uid in (U, V)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    valid = sorted(uid for uid, reply in replies.items() if reply is not None and reply["is_valid"])
    assert len(replies) == 2 and len(valid) == 1, replies
    trained = Authorization.objects.get(machine=lab.laser, trained_by=lab.staff)
    assert trained.member.cards.get().uid == valid[0]
    refused = ({U, V} - set(valid)).pop()
    assert reasons(uid=refused) == [Reason.NOT_AUTHORIZED]


# --- (c) Fault reports ----------------------------------------------------------------------------------------


@pytest.fixture
def own_bridge(own_broker: Broker, settings: Settings) -> Iterator[list[Bridge]]:
    """The real bridge on a broker of this test's own, restartable (the holder's last item is the running one)."""
    settings.MQTT = {**settings.MQTT, "HOST": "127.0.0.1", "PORT": own_broker.port, "TOPIC": "machine"}
    running: list[Bridge] = []

    def start() -> None:
        bridge = Bridge(client_id=f"test-bridge-{uuid.uuid4().hex[:8]}", housekeeping_every=3600)
        reconnect_delay(bridge.client, 0.1, 0.5)
        bridge.start()
        assert bridge.subscribed.wait(10), "bridge did not subscribe"
        running.append(bridge)

    start()
    holder: list = [running, start]
    yield holder
    running[-1].stop()


def ask_until_answered(board: FirmwareBoard, attempts: int = 40) -> dict:
    """While the broker or the bridge restarts, requests go unanswered: the board's 30 s tick asks again."""
    for _ in range(attempts):
        board.wait_ready()
        board.send({"action": "checkmachine"})
        try:
            reply = json.loads(board.replies.get(timeout=0.5))
        except Exception:
            continue
        board.allowed, board.maintenance, board.description = (
            reply["allowed"],
            reply["maintenance"],
            reply["description"],
        )
        return reply
    raise AssertionError("never answered")


def test_c_out_of_order_locks_at_the_next_login_and_holds_across_restarts(
    lab: Lab, own_broker: Broker, own_bridge: list
) -> None:
    running, start_bridge = own_bridge
    board = FirmwareBoard(own_broker.port, 1)
    try:
        board.check_machine()
        assert board.swipe(N) == "Use started"
        fault = safety.report_fault(lab.laser, severity=FaultReport.Severity.OUT_OF_ORDER, description="Smoke")
        safety.report_fault(lab.laser, severity=FaultReport.Severity.MINOR, description="A scratch")
        # The running session is never cut: its heartbeats and its stop are recorded as usual.
        board.tick(30)
        assert (board.maintenance, board.description) == (True, "Out of order")
        assert board.allowed is True
        time_passes(60)
        assert board.log_out(60)["request_ok"] is True
        use = Use.objects.get(member=lab.normal)
        assert (use.duration, use.ended_at is not None) == (60, True)

        assert board.swipe(N) == "Unknown card"  # level 1 refused by the backend, reason fault
        assert reasons(member=lab.normal) == [Reason.FAULT]
        assert board.swipe(S) == "Use started"  # level 2 passes (no hold: the fault stays open)
        assert board.level == 2
        time_passes(30)
        board.log_out(30)

        # Restart the bridge, then the broker: the lock is in the database.
        running[-1].stop()
        start_bridge()
        assert ask_until_answered(board)["description"] == "Out of order"
        own_broker.restart()
        assert running[-1].subscribed.wait(20), "bridge did not resubscribe"
        assert ask_until_answered(board)["maintenance"] is True
        # A board reboot: boot defaults (unlocked) until its first checkmachine, which says locked again.
        board.close()
        board = FirmwareBoard(own_broker.port, 1)
        assert (board.allowed, board.maintenance) == (True, False)
        board.check_machine()
        assert (board.maintenance, board.description) == (True, "Out of order")

        # A replayed hold closes nothing (it happened at an unknown time, perhaps before the report).
        assert board.request({"action": "maintenance", "uid": S, "replay": True})["request_ok"] is True
        assert FaultReport.objects.get(pk=fault.pk).closed_at is None
        # A level-1 hold is not accepted.
        assert board.request({"action": "maintenance", "uid": N})["request_ok"] is False
        # The live 10-second hold of a level-2 card closes it; the next checkmachine is clear.
        assert board.swipe(S, hold=True) == "Maintenance recorded"
        fault.refresh_from_db()
        assert (fault.closed_via, fault.closed_by_id) == (FaultReport.Via.MACHINE, lab.staff.pk)
        assert not FaultReport.objects.filter(closed_at__isnull=True).exists()  # the minor report too (§9.5)
        assert (board.maintenance, board.description) == (False, "")
        time_passes(30)
        board.log_out(30)
        assert board.swipe(N) == "Use started"
        assert_quiet(board)
    finally:
        board.close()


# --- (d) Check after use --------------------------------------------------------------------------------------


def test_d_check_after_use_locks_until_a_staff_hold_and_a_duplicated_stop_opens_one(
    lab: Lab, board: FirmwareBoard
) -> None:
    MachineType.objects.filter(pk=lab.laser.type_id).update(check_after_use=True)
    assert board.swipe(N) == "Use started"
    assert (board.maintenance, board.description) == (False, "")
    time_passes(45)
    assert board.log_out(45)["request_ok"] is True
    use = Use.objects.get(member=lab.normal)
    # The duplicates of §3.5: the same stop again live, then replayed (answered too late the first time).
    assert board.request({"action": "stopuse", "uid": N, "duration": 45})["request_ok"] is True
    assert board.request({"action": "stopuse", "uid": N, "duration": 45, "replay": True})["request_ok"] is True
    assert list(MachineCheck.objects.values_list("use_id", flat=True)) == [use.pk]
    board.check_machine()
    assert (board.maintenance, board.description, board.allowed) == (True, "To check", True)

    assert board.swipe(N) == "Unknown card"
    assert reasons(member=lab.normal) == [Reason.TO_CHECK]
    # A replayed hold confirms nothing; the live hold does.
    assert board.request({"action": "maintenance", "uid": S, "replay": True})["request_ok"] is True
    assert MachineCheck.objects.get().checked_at is None
    assert board.swipe(S, hold=True) == "Maintenance recorded"
    check = MachineCheck.objects.get()
    assert (check.checked_by_id, check.checked_via) == (lab.staff.pk, FaultReport.Via.MACHINE)
    assert (board.maintenance, board.description) == (False, "")
    # Staff's own use is a use too: it asks for the next check.
    time_passes(30)
    board.log_out(30)
    assert MachineCheck.objects.filter(checked_at__isnull=True).count() == 1
    assert board.check_machine()["description"] == "To check"
    assert_quiet(board)


def test_d_every_way_a_use_closes_opens_its_check_once(lab: Lab, board: FirmwareBoard) -> None:
    """An orphan closed by another member's login (S18), and an offline session replayed whole (S14)."""
    MachineType.objects.filter(pk=lab.laser.type_id).update(check_after_use=True)
    assert board.swipe(S) == "Use started"
    time_passes(30)
    # The board rebooted during S's session (no stopuse); A logs in: S's use is closed at its last heartbeat.
    board.user = None
    assert board.swipe(A) == "Use started"  # level 2: passes the check's lock
    orphan = Use.objects.get(member=lab.staff)
    assert orphan.ended_at is not None
    assert MachineCheck.objects.filter(use=orphan).count() == 1
    time_passes(30)
    board.log_out(30)
    # An offline session, replayed twice (a publish that failed is buffered twice, §3.5): one use, one check.
    time_passes(300)
    for _ in range(2):
        assert board.request({"action": "startuse", "uid": N, "replay": True})["request_ok"] is True
        assert board.request({"action": "stopuse", "uid": N, "duration": 100, "replay": True})["request_ok"] is True
    replayed = Use.objects.get(member=lab.normal)
    assert MachineCheck.objects.filter(use=replayed).count() == 1
    assert MachineCheck.objects.count() == 3  # S's orphan, A's use, N's replayed session
    assert_quiet(board)


# --- (e) A reason for every refusal ---------------------------------------------------------------------------


def test_e_every_refusal_is_kept_once_per_swipe_with_its_reason(lab: Lab, board: FirmwareBoard) -> None:
    laser = lab.laser

    def lapse() -> None:
        Authorization.objects.filter(member=lab.normal).update(
            expiry=Authorization.Expiry.ON_DATE, expires_at=timezone.now() - timedelta(hours=1)
        )

    def unlapse() -> None:
        Authorization.objects.filter(member=lab.normal).update(expiry=Authorization.Expiry.NEVER, expires_at=None)

    def block() -> None:
        Machine.objects.filter(pk=laser.pk).update(blocked=True)

    def unblock() -> None:
        Machine.objects.filter(pk=laser.pk).update(blocked=False)

    def fault() -> None:
        safety.report_fault(laser, severity=FaultReport.Severity.OUT_OF_ORDER, description="Broken")

    def unfault() -> None:
        safety.close_faults(laser, by=lab.staff, via=FaultReport.Via.PORTAL)

    def to_check() -> None:
        MachineCheck.objects.create(machine=laser, requested_at=timezone.now())

    def checked() -> None:
        safety.confirm_check(laser, by=lab.staff, via=FaultReport.Via.PORTAL)

    def due() -> None:
        Machine.objects.filter(pk=laser.pk).update(hours=F("hours") + 11)

    def nothing() -> None:
        pass

    cases = [
        (UNKNOWN, nothing, nothing, Reason.UNKNOWN_CARD, "Unknown card"),
        (U, nothing, nothing, Reason.NOT_AUTHORIZED, "Unknown card"),
        (N, lapse, unlapse, Reason.EXPIRED, "Unknown card"),
        (D, nothing, nothing, Reason.DISABLED, "Unknown card"),
        (N, block, unblock, Reason.BLOCKED, "Unknown card"),
        (A, block, unblock, Reason.BLOCKED, "Blocked by admins"),  # allowed, refused by the board itself
        (N, fault, unfault, Reason.FAULT, "Unknown card"),
        (N, to_check, checked, Reason.TO_CHECK, "Unknown card"),
        (N, due, nothing, Reason.MAINTENANCE_DUE, "Blocked for maintenance"),  # allowed, refused by the board
    ]
    for uid, setup, undo, reason, screen in cases:
        setup()
        board.check_machine()
        Refusal.objects.all().delete()
        assert board.swipe(uid) == screen, reason
        # The board's duplicate of the same request within seconds is not a second swipe.
        board.request({"action": "checkuser", "uid": uid})
        assert reasons() == [reason], (uid, reason)
        refusal = Refusal.objects.get()
        assert refusal.uid == uid and refusal.machine_id == laser.pk
        member = Card.objects.filter(uid=uid).values_list("member_id", flat=True).first()
        assert refusal.member_id == member
        # A later swipe is a new row.
        Refusal.objects.update(at=F("at") - timedelta(seconds=safety.REFUSAL_DEDUP_SECONDS + 1))
        board.swipe(uid)
        assert reasons() == [reason, reason], (uid, reason)
        undo()
    # Level 2 passes the maintenance the board shows: nothing refused.
    Refusal.objects.all().delete()
    board.check_machine()
    assert board.swipe(S) == "Use started"
    assert reasons() == []
    assert_quiet(board)


def test_the_lock_message_is_in_the_lab_language_and_fits_the_lcd(
    lab: Lab, board: FirmwareBoard, settings: Settings
) -> None:
    settings.LANGUAGE_CODE = "it"
    safety.report_fault(lab.laser, severity=FaultReport.Severity.OUT_OF_ORDER, description="Fumo")
    assert board.check_machine()["description"] == "Fuori servizio"
    safety.close_faults(lab.laser, by=lab.staff, via=FaultReport.Via.PORTAL)
    MachineCheck.objects.create(machine=lab.laser, requested_at=timezone.now())
    assert board.check_machine()["description"] == "Da controllare"
    for language in ("en", "it"):
        settings.LANGUAGE_CODE = language
        assert all(len(safety.lock_message(reason)) <= 16 for reason in (Reason.FAULT, Reason.TO_CHECK))
