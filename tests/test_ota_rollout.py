"""The staged firmware rollout (telemetry/rollout.py) against simulated boards: real espota pushes to receivers on
127.0.0.x, the boards' ``alive`` through the bridge's own ingest code."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from auditlog.models import LogEntry
from django.core.exceptions import ValidationError
from django.utils import timezone
from pytest_django import Settings

from machines.models import Machine, Use
from telemetry import espota, ingest, rollout
from telemetry import protocol as p
from telemetry.models import Board, FirmwareImage, OtaPush, Rollout

from .conftest import Lab
from .espota_receiver import Mode, Receiver, free_udp_port

ENV = "hardware-rev0-it_IT"
OLD = f"{ENV},1.0.1-3-g0ab6099"
NEW = f"{ENV},1.0.4"
IMAGE = b"\xe9" + os.urandom(9000)
FAST = espota.Timeouts(invitation=0.3, invitations=2, connect_back=1.0, ack=1.0, result=1.0)
State, Reason = OtaPush.State, OtaPush.Reason


class Fleet:
    """Three machines with boards on 127.0.0.2-4; flashed boards "reboot" when the test says so."""

    def __init__(self, lab: Lab, port: int) -> None:
        self.machines = [lab.laser, lab.printer, Machine.objects.create(id=3, name="CUTTER 1", type=lab.printer.type)]
        self.ips = {m.pk: f"127.0.0.{i + 2}" for i, m in enumerate(self.machines)}
        self.receivers = {pk: Receiver(ip, port) for pk, ip in self.ips.items()}
        for pk in self.ips:
            self.alive(pk, OLD)

    def alive(self, machine_id: int, version: str, now: datetime | None = None) -> None:
        request = p.Alive(version=version, ip=self.ips[machine_id], serial=f"dcda0c41979{machine_id}", heap=200000)
        ingest.process(machine_id, request, now=now)

    def reboot_flashed(self, version: str = NEW, now: datetime | None = None) -> list[int]:
        """Every board that received an image since the last call comes back with ``version``."""
        rebooted = []
        for pk, receiver in self.receivers.items():
            while receiver.images:
                assert receiver.images.pop() == IMAGE
                self.alive(pk, version, now)
                rebooted.append(pk)
        return rebooted

    def close(self) -> None:
        for receiver in self.receivers.values():
            receiver.close()
            assert receiver.errors == []


@pytest.fixture
def fleet(lab: Lab, settings: Settings) -> Iterator[Fleet]:
    settings.OTA_PORT = free_udp_port()
    settings.OTA_BIND = "127.0.0.1"
    fleet = Fleet(lab, settings.OTA_PORT)
    yield fleet
    fleet.close()


@pytest.fixture
def image(lab: Lab) -> FirmwareImage:
    return FirmwareImage.objects.create(
        environment=ENV,
        version="1.0.4",
        data=IMAGE,
        md5=hashlib.md5(IMAGE, usedforsecurity=False).hexdigest(),
        size=len(IMAGE),
        uploaded_by=lab.admin,
    )


def states(r: Rollout) -> list[tuple[int, str, str]]:
    return [(x.machine_id, x.state, x.reason) for x in r.pushes.order_by("position")]


def push(ip: str, data: bytes, **kwargs: object) -> espota.PushResult:
    return espota.push(ip, data, timeouts=FAST, **kwargs)  # type: ignore[arg-type]


def test_canary_first_then_the_others_one_by_one(fleet: Fleet, image: FirmwareImage, lab: Lab) -> None:
    r = rollout.start(image, [2, 1, 3])
    rollout.step(r, push=push)
    assert states(r) == [(2, State.CONFIRMING, ""), (1, State.WAITING, ""), (3, State.WAITING, "")]
    assert fleet.receivers[1].invitations == fleet.receivers[3].invitations == []
    rollout.step(r, push=push)  # no alive yet: the others keep waiting
    assert fleet.receivers[1].invitations == []
    assert fleet.reboot_flashed() == [2]
    rollout.step(r, push=push)  # the canary is back with 1.0.4: the next board is flashed
    assert states(r)[:2] == [(2, State.DONE, ""), (1, State.CONFIRMING, "")]
    assert fleet.receivers[3].invitations == []
    fleet.reboot_flashed()
    rollout.step(r, push=push)
    fleet.reboot_flashed()
    rollout.step(r, push=push)
    r.refresh_from_db()
    assert r.state == Rollout.State.DONE and r.finished_at is not None
    assert [s for _pk, s, _r in states(r)] == [State.DONE] * 3
    assert set(Board.objects.values_list("firmware", flat=True)) == {NEW}


def test_a_busy_machine_waits_and_is_retried(fleet: Fleet, image: FirmwareImage, lab: Lab) -> None:
    now = timezone.now()
    use = Use.objects.create(member=lab.normal, machine=lab.printer, started_at=now, last_seen=now)
    r = rollout.start(image, [1, 2, 3])
    rollout.step(r, push=push)
    fleet.reboot_flashed()
    rollout.step(r, push=push)  # the canary is done; machine 2 is in use: machine 3 goes first
    assert states(r) == [(1, State.DONE, ""), (2, State.WAITING, Reason.IN_USE), (3, State.CONFIRMING, "")]
    assert fleet.receivers[2].invitations == []
    fleet.reboot_flashed()
    rollout.step(r, push=push)
    assert states(r)[1] == (2, State.WAITING, Reason.IN_USE)
    Use.objects.filter(pk=use.pk).update(ended_at=timezone.now(), duration=1)
    rollout.step(r, push=push)
    assert states(r)[1] == (2, State.CONFIRMING, "")


def test_a_busy_canary_holds_the_others_back(fleet: Fleet, image: FirmwareImage, lab: Lab) -> None:
    now = timezone.now()
    Use.objects.create(member=lab.normal, machine=lab.laser, started_at=now, last_seen=now)
    r = rollout.start(image, [1, 2])
    rollout.step(r, push=push)
    assert states(r) == [(1, State.WAITING, Reason.IN_USE), (2, State.WAITING, "")]
    assert fleet.receivers[2].invitations == []


def test_a_board_back_with_the_old_version_stops_the_rollout(fleet: Fleet, image: FirmwareImage, lab: Lab) -> None:
    r = rollout.start(image, [1, 2, 3], request=None)
    rollout.step(r, push=push)
    pushed = OtaPush.objects.get(rollout=r, machine_id=1).pushed_at
    assert pushed is not None
    fleet.reboot_flashed(OLD, now=pushed + timedelta(seconds=10))  # before its reboot: not the answer yet
    rollout.step(r, push=push, now=pushed + timedelta(seconds=10))
    assert states(r)[0][1] == State.CONFIRMING
    later = pushed + timedelta(seconds=90)
    fleet.alive(1, OLD, now=later)
    rollout.step(r, push=push, now=later)
    r.refresh_from_db()
    assert r.state == Rollout.State.FAILED
    assert states(r) == [
        (1, State.FAILED, Reason.OLD_VERSION),
        (2, State.SKIPPED, Reason.STOPPED),
        (3, State.SKIPPED, Reason.STOPPED),
    ]
    assert fleet.receivers[2].invitations == fleet.receivers[3].invitations == []


def test_a_board_that_never_comes_back_fails(fleet: Fleet, image: FirmwareImage, settings: Settings) -> None:
    r = rollout.start(image, [1, 2])
    rollout.step(r, push=push)
    pushed = OtaPush.objects.get(rollout=r, machine_id=1).pushed_at
    assert pushed is not None
    rollout.step(r, push=push, now=pushed + timedelta(seconds=settings.OTA_CONFIRM_SECONDS - 5))
    assert states(r)[0][1] == State.CONFIRMING
    rollout.step(r, push=push, now=pushed + timedelta(seconds=settings.OTA_CONFIRM_SECONDS + 5))
    assert states(r) == [(1, State.FAILED, Reason.NOT_BACK), (2, State.SKIPPED, Reason.STOPPED)]


@pytest.mark.parametrize(
    ("mode", "reason"),
    [(Mode.SILENT, Reason.NO_ANSWER), (Mode.WRONG_MD5, Reason.MD5_REJECTED), (Mode.BROKEN, Reason.BROKEN_TRANSFER)],
)
def test_a_failed_push_stops_the_rollout_with_its_reason(
    fleet: Fleet, image: FirmwareImage, mode: Mode, reason: str
) -> None:
    fleet.receivers[1].mode = mode
    r = rollout.start(image, [1, 2])
    rollout.step(r, push=push)
    assert states(r) == [(1, State.FAILED, reason), (2, State.SKIPPED, Reason.STOPPED)]
    assert OtaPush.objects.get(rollout=r, machine_id=1).detail
    r.refresh_from_db()
    assert r.state == Rollout.State.FAILED


def test_an_offline_board_waits(fleet: Fleet, image: FirmwareImage, settings: Settings) -> None:
    Machine.objects.filter(pk=1).update(last_seen=timezone.now() - timedelta(seconds=settings.ONLINE_SECONDS + 1))
    r = rollout.start(image, [1])
    rollout.step(r, push=push)
    assert states(r) == [(1, State.WAITING, Reason.OFFLINE)]
    assert fleet.receivers[1].invitations == []


def test_every_push_is_in_the_audit_trail(fleet: Fleet, image: FirmwareImage, lab: Lab) -> None:
    r = rollout.start(image, [1])
    Rollout.objects.filter(pk=r.pk).update(started_by=lab.admin)
    r.refresh_from_db()
    rollout.step(r, push=push)
    fleet.reboot_flashed()
    rollout.step(r, push=push)
    push_entries = LogEntry.objects.get_for_object(OtaPush.objects.get(rollout=r))
    messages = [e.additional_data["message"] for e in push_entries]
    assert any("sent to machine" in m for m in messages) and any("installed on machine" in m for m in messages)
    assert {e.actor_id for e in push_entries} == {lab.admin.pk}
    assert any("finished" in e.additional_data["message"] for e in LogEntry.objects.get_for_object(r))


def test_start_checks_the_environment_and_overlaps(fleet: Fleet, image: FirmwareImage) -> None:
    Board.objects.filter(machine_id=3).update(firmware="hardware-rev1-en_US,1.0.1")
    with pytest.raises(ValidationError):
        rollout.start(image, [1, 3])
    with pytest.raises(ValidationError):
        rollout.start(image, [])
    rollout.start(image, [1])
    with pytest.raises(ValidationError):
        rollout.start(image, [1, 2])


def test_a_push_left_pushing_by_a_crash_fails_on_restart(fleet: Fleet, image: FirmwareImage) -> None:
    r = rollout.start(image, [1, 2])
    OtaPush.objects.filter(rollout=r, machine_id=1).update(state=State.PUSHING, started_at=timezone.now())
    assert rollout.recover() == 1
    assert states(r) == [(1, State.FAILED, Reason.INTERRUPTED), (2, State.SKIPPED, Reason.STOPPED)]


def test_the_runner_loop_runs_a_rollout_to_its_end(fleet: Fleet, image: FirmwareImage) -> None:
    """run(): the lock, the recovery, the rounds; the boards reboot with the new version after each push."""

    def push_and_reboot(ip: str, data: bytes, **kwargs: object) -> espota.PushResult:
        result = push(ip, data, **kwargs)
        fleet.reboot_flashed()
        return result

    r = rollout.start(image, [3, 1])
    rollout.request_path().touch()  # as launch_runner does
    with rollout.runner_lock() as mine:  # another runner holds the lock: this one does nothing
        assert mine
        assert rollout.run(push=push_and_reboot, poll=0.01) is False
    keep = lambda: None  # noqa: E731 -- the test's transaction holds the connection
    assert rollout.run(push=push_and_reboot, poll=0.01, until=time.monotonic() + 30, between_rounds=keep) is True
    r.refresh_from_db()
    assert r.state == Rollout.State.DONE
    assert not rollout.request_path().exists()  # systemd's path unit stops starting it
    assert not rollout.launch_runner()  # nothing left to run


def test_under_systemd_the_portal_only_leaves_the_request_file(
    fleet: Fleet, image: FirmwareImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fabomatic-ota.path starts the runner outside the portal's unit: the portal starts no process of its own."""
    rollout.request_path().unlink(missing_ok=True)
    assert not rollout.launch_runner() and not rollout.request_path().exists()  # no rollout: nothing asked
    rollout.start(image, [1])
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
    monkeypatch.setattr(rollout.subprocess, "Popen", lambda *a, **k: pytest.fail("spawned under systemd"))
    assert not rollout.launch_runner()
    assert rollout.request_path().exists()
    monkeypatch.delenv("INVOCATION_ID")
    with rollout.runner_lock():  # a runner is already at work
        assert not rollout.launch_runner()
    rollout.request_path().unlink()


def test_a_cancelled_rollout_still_confirms_the_transfer_under_way(fleet: Fleet, image: FirmwareImage) -> None:
    r = rollout.start(image, [1, 2])
    rollout.step(r, push=push)
    rollout.cancel(r)
    assert states(r) == [(1, State.CONFIRMING, ""), (2, State.SKIPPED, Reason.CANCELLED)]
    assert list(rollout.active()) == [r]  # the runner keeps watching the canary
    fleet.reboot_flashed()
    rollout.step(Rollout.objects.get(pk=r.pk), push=push)
    assert states(r)[0] == (1, State.DONE, "")
    assert fleet.receivers[2].invitations == []
    assert not rollout.active().exists()
    assert Rollout.objects.get(pk=r.pk).state == Rollout.State.CANCELLED


@pytest.mark.parametrize(
    ("address", "usable"),
    [
        ("192.168.1.50", True),
        ("10.0.0.7", True),
        ("255.255.255.255", False),
        ("224.0.0.251", False),
        ("0.0.0.0", False),
        ("fe80::1", False),
        ("", False),
        (None, False),
    ],
)
def test_only_a_single_board_address_is_invited(address: str | None, usable: bool) -> None:
    assert rollout.usable_address(address) is usable


def test_a_board_reporting_the_broadcast_address_waits(fleet: Fleet, image: FirmwareImage) -> None:
    Board.objects.filter(machine_id=1).update(ip_address="255.255.255.255")
    r = rollout.start(image, [1])
    rollout.step(r, push=push)
    assert states(r) == [(1, State.WAITING, Reason.NO_ADDRESS)]
