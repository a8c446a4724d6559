"""The espota push (telemetry/espota.py) against a simulated board's ArduinoOTA receiver: success and each failure."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest

from telemetry import espota
from telemetry.espota import Failure

from .espota_receiver import Mode, Receiver, free_udp_port

FAST = espota.Timeouts(invitation=0.3, invitations=2, connect_back=1.0, ack=1.0, result=1.0)
IMAGE = b"\xe9" + os.urandom(40_000)  # not a multiple of the chunk size


@pytest.fixture
def board() -> Iterator[Receiver]:
    receiver = Receiver("127.0.0.2", free_udp_port())
    yield receiver
    receiver.close()
    assert receiver.errors == []  # every invitation was well formed


def test_success_flashes_the_exact_image(board: Receiver) -> None:
    seen: list[tuple[int, int]] = []
    result = espota.push(board.ip, IMAGE, port=board.port, timeouts=FAST, progress=lambda a, b: seen.append((a, b)))
    assert result.ok, result
    assert result.failure is None and result.sent == len(IMAGE)
    assert board.images == [IMAGE]
    md5 = hashlib.md5(IMAGE, usedforsecurity=False).hexdigest()
    assert board.invitations[0].split()[2:] == [str(len(IMAGE)), md5]
    assert seen[-1] == (len(IMAGE), len(IMAGE))


@pytest.mark.parametrize(
    ("mode", "failure"),
    [
        (Mode.SILENT, Failure.NO_ANSWER),
        (Mode.BUSY, Failure.NO_ANSWER),
        (Mode.REFUSE, Failure.REFUSED),
        (Mode.AUTH, Failure.PASSWORD_REQUIRED),
        (Mode.NO_CONNECT, Failure.NO_CONNECTION),
        (Mode.WRONG_MD5, Failure.MD5_REJECTED),
        (Mode.BROKEN, Failure.BROKEN_TRANSFER),
        (Mode.STALL, Failure.BROKEN_TRANSFER),
        (Mode.NO_RESULT, Failure.TIMEOUT),
    ],
)
def test_each_failure_has_its_reason(board: Receiver, mode: Mode, failure: Failure) -> None:
    board.mode = mode
    result = espota.push(board.ip, IMAGE, port=board.port, timeouts=FAST)
    assert not result.ok
    assert result.failure is failure, result
    assert str(result).startswith(str(failure))
    assert board.images == []
    if mode is Mode.SILENT:
        assert len(board.invitations) == FAST.invitations  # sent again before giving up


def test_md5_failure_shows_the_boards_text(board: Receiver) -> None:
    board.mode = Mode.WRONG_MD5
    result = espota.push(board.ip, IMAGE, port=board.port, timeouts=FAST)
    assert "MD5 Check Failed" in result.detail


def test_nobody_listening_is_no_answer() -> None:
    result = espota.push("127.0.0.3", IMAGE, port=free_udp_port(), timeouts=FAST)
    assert result.failure is Failure.NO_ANSWER


def test_only_the_board_may_fetch_the_image(board: Receiver) -> None:
    """A connection from another address is closed: the image goes to the invited board only."""
    original = board._receive

    def from_elsewhere(host: str, port: int, size: int, md5: str) -> None:
        import socket

        with socket.socket() as other:
            other.bind(("127.0.0.9", 0))
            other.connect((host, port))
            assert other.recv(10) == b""  # closed without a byte of the image
        original(host, port, size, md5)

    board._receive = from_elsewhere  # type: ignore[method-assign]
    result = espota.push(board.ip, IMAGE, port=board.port, timeouts=FAST)
    assert result.ok, result
    assert board.images == [IMAGE]


def test_a_fixed_host_port_for_a_firewall(board: Receiver) -> None:
    """OTA_HOST_PORT: the board is told, and connects back to, that port; twice in a row (SO_REUSEADDR)."""
    port = free_udp_port()  # free for TCP as well, in practice, on a test machine
    for _ in range(2):
        result = espota.push(board.ip, IMAGE, port=board.port, timeouts=FAST, host_port=port)
        assert result.ok, result
    assert [line.split()[1] for line in board.invitations] == [str(port), str(port)]
