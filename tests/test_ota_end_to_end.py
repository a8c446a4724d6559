"""A rollout end to end: the real bridge on Mosquitto, simulated boards announcing themselves with ``alive`` over
MQTT and flashed by the runner over espota; each board reboots into the image it received and says so in its next
``alive``, which the bridge records and the runner reads back."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from functools import partial

import pytest
from auditlog.models import LogEntry
from pytest_django import Settings

from telemetry import espota, rollout
from telemetry.models import Board, FirmwareImage, OtaPush, Rollout

from .boards import SimBoard
from .conftest import Lab
from .espota_receiver import Receiver, free_udp_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.broker]

ENV = "hardware-rev0-it_IT"
IMAGE = b"\xe9" + os.urandom(30_000)
FAST = espota.Timeouts(invitation=0.5, invitations=2, connect_back=2.0, ack=2.0, result=2.0)


def announce(board: SimBoard, ip: str, version: str) -> None:
    board.send({"action": "alive", "version": f"{ENV},{version}", "ip": ip, "serial": "dcda0c419794", "heap": "201344"})


@pytest.fixture
def fleet(lab: Lab, m1: SimBoard, m2: SimBoard, settings: Settings) -> Iterator[dict[int, Receiver]]:
    settings.OTA_PORT = free_udp_port()
    settings.OTA_BIND = "127.0.0.1"
    receivers: dict[int, Receiver] = {}

    def rebooted(board: SimBoard, ip: str) -> Callable[[bytes], None]:
        # The board reboots into the image it verified and announces the version it now runs.
        return lambda _image: announce(board, ip, "1.0.4")

    for pk, board, ip in ((1, m1, "127.0.0.2"), (2, m2, "127.0.0.3")):
        receivers[pk] = Receiver(ip, settings.OTA_PORT, on_flashed=rebooted(board, ip))
        announce(board, ip, "1.0.1-3-g0ab6099")
    deadline = time.monotonic() + 10
    while Board.objects.count() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    yield receivers
    for receiver in receivers.values():
        receiver.close()
        assert receiver.errors == []


def test_a_rollout_reaches_every_board_through_the_bridge(fleet: dict[int, Receiver], lab: Lab) -> None:
    image = FirmwareImage.objects.create(
        environment=ENV,
        version="1.0.4",
        data=IMAGE,
        md5=hashlib.md5(IMAGE, usedforsecurity=False).hexdigest(),
        size=len(IMAGE),
    )
    r = rollout.start(image, [2, 1])
    Rollout.objects.filter(pk=r.pk).update(started_by=lab.admin)
    assert rollout.run(push=partial(espota.push, timeouts=FAST), poll=0.1, until=time.monotonic() + 60)
    r.refresh_from_db()
    assert r.state == Rollout.State.DONE, list(r.pushes.values("machine_id", "state", "reason", "detail"))
    assert [fleet[2].images, fleet[1].images] == [[IMAGE], [IMAGE]]
    pushes = list(OtaPush.objects.filter(rollout=r).order_by("position"))
    assert [(x.machine_id, x.state) for x in pushes] == [(2, OtaPush.State.DONE), (1, OtaPush.State.DONE)]
    assert pushes[0].finished_at is not None and pushes[1].started_at is not None
    assert pushes[1].started_at >= pushes[0].finished_at  # the second board only after the canary came back
    assert set(Board.objects.values_list("firmware", flat=True)) == {f"{ENV},1.0.4"}
    assert all(LogEntry.objects.get_for_object(x).filter(actor=lab.admin).count() == 2 for x in pushes)
