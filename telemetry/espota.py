"""The host side of the espota protocol: pushing a firmware image to a board running ArduinoOTA (ESP32).

The exchange, as Arduino's ``espota.py`` and the ESP32 ``ArduinoOTA`` library do it:

1. The host listens on a free TCP port, then sends the board's OTA port (3232 on the ESP32) one UDP datagram, the
   invitation ``"<command> <host port> <size> <md5 hex>\\n"`` (command 0 = flash the application).
2. The board answers the datagram's sender ``OK`` (or ``AUTH <nonce>`` when it has an OTA password: Fab-O-Matic
   boards have none, so this is a failure here). A board busy with another update ignores invitations.
3. The board connects back over TCP to the invitation's source address, on the port it was given, and reads the
   image; after each read it writes the number of bytes it stored, in decimal, without separator.
4. When it has ``size`` bytes it checks the MD5 and writes ``OK`` (then reboots) or an error text
   (``Error[N]: MD5 Check Failed`` …) and closes the connection.

Only the board's own address may connect back: the image is streamed to nobody else.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

FLASH = 0
OTA_PORT = 3232  # the ESP32's ArduinoOTA default
CHUNK = 1024
MAX_REPLIES = 64 * 1024  # the acknowledgements of a 4 MB image are about 20 KB: more is not a board


class Failure(enum.StrEnum):
    """Why a push failed: the values are stable (stored on the push records and shown in the portal)."""

    NO_ANSWER = "no-answer"  # nothing answered the invitation (board off, wrong IP, UDP blocked, board busy)
    PASSWORD_REQUIRED = "password-required"  # the board asked for an OTA password (AUTH challenge)
    REFUSED = "refused"  # the board answered the invitation with something else than OK
    NO_CONNECTION = "no-connection"  # the board accepted but never connected back (TCP port blocked?)
    BROKEN_TRANSFER = "broken-transfer"  # the connection broke or stalled while the image was sent
    MD5_REJECTED = "md5-rejected"  # the board received the image but its MD5 did not match
    BOARD_ERROR = "board-error"  # the board reported another update error (no space, bad image …)
    TIMEOUT = "timeout"  # the image was sent but the board never confirmed it
    NETWORK = "network"  # the host could not listen or send at all


@dataclass(frozen=True)
class PushResult:
    ok: bool
    failure: Failure | None = None
    detail: str = ""
    sent: int = 0  # bytes of the image handed to the board
    seconds: float = 0.0

    def __str__(self) -> str:
        if self.ok:
            return f"flashed ({self.sent} bytes in {self.seconds:.1f} s)"
        return f"{self.failure}: {self.detail}" if self.detail else str(self.failure)


@dataclass(frozen=True)
class Timeouts:
    """Seconds. espota.py: 10 s per invitation (10 tries), 10 s to connect back, 10 s per ack, 60 s for the result."""

    invitation: float = 3.0
    invitations: int = 3
    connect_back: float = 15.0
    ack: float = 10.0
    result: float = 60.0


def invitation(size: int, md5: str, host_port: int, command: int = FLASH) -> bytes:
    return f"{command} {host_port} {size} {md5}\n".encode("ascii")


def push(
    board_ip: str,
    image: bytes,
    *,
    port: int = OTA_PORT,
    bind: str = "0.0.0.0",  # the board connects back to the address the invitation came from
    host_port: int = 0,  # 0: any free port; a fixed one for a firewall to open
    timeouts: Timeouts | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PushResult:
    """Flash ``image`` on the board at ``board_ip``; never raises for a network or board failure."""
    timeouts = timeouts or Timeouts()
    started = time.monotonic()
    md5 = hashlib.md5(image, usedforsecurity=False).hexdigest()

    def fail(failure: Failure, detail: str, sent: int = 0) -> PushResult:
        logger.warning("OTA push to %s failed: %s (%s)", board_ip, failure, detail)
        return PushResult(False, failure, detail, sent, time.monotonic() - started)

    try:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a fixed port, again right after a push
        server.bind((bind, host_port))
        server.listen(1)
    except OSError as exc:
        return fail(Failure.NETWORK, f"cannot listen: {exc}")
    with server:
        host_port = server.getsockname()[1]
        answer = _invite(board_ip, port, invitation(len(image), md5, host_port), timeouts)
        if isinstance(answer, PushResult):
            return fail(answer.failure or Failure.NETWORK, answer.detail)
        if answer.startswith("AUTH"):
            return fail(Failure.PASSWORD_REQUIRED, "the board asked for an OTA password")
        if answer != "OK":
            return fail(Failure.REFUSED, f"the board answered {answer[:40]!r}")
        conn = _accept_from(server, board_ip, timeouts.connect_back)
        if conn is None:
            return fail(Failure.NO_CONNECTION, f"the board did not connect back within {timeouts.connect_back:g} s")
        with conn:
            outcome = _stream(conn, image, timeouts, progress)
    if outcome.ok:
        result = PushResult(True, None, "", len(image), time.monotonic() - started)
        logger.info("OTA push to %s: %s", board_ip, result)
        return result
    return fail(outcome.failure or Failure.BROKEN_TRANSFER, outcome.detail, outcome.sent)


def _invite(board_ip: str, port: int, message: bytes, timeouts: Timeouts) -> str | PushResult:
    """Send the invitation (again, up to ``invitations`` times) and return the board's answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(timeouts.invitation)
        for _attempt in range(max(1, timeouts.invitations)):
            try:
                udp.sendto(message, (board_ip, port))
                data, sender = udp.recvfrom(64)
            except TimeoutError:
                continue
            except OSError as exc:  # unreachable host or network, refused port (ICMP), bad address
                return PushResult(False, Failure.NO_ANSWER, f"cannot reach {board_ip}:{port}: {exc}")
            if sender[0] != board_ip:
                continue  # not the board: ignored
            return data.decode("ascii", errors="replace").strip()
    waited = timeouts.invitation * max(1, timeouts.invitations)
    return PushResult(False, Failure.NO_ANSWER, f"no answer from {board_ip}:{port} in {waited:g} s")


def _accept_from(server: socket.socket, board_ip: str, timeout: float) -> socket.socket | None:
    """The board's connection; connections from any other address are closed at once."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        server.settimeout(left)
        try:
            conn, peer = server.accept()
        except (TimeoutError, OSError):
            return None
        if peer[0] == board_ip:
            return conn
        logger.warning("OTA: refused a connection from %s while waiting for %s", peer[0], board_ip)
        conn.close()
    return None


def _stream(
    conn: socket.socket, image: bytes, timeouts: Timeouts, progress: Callable[[int, int], None] | None
) -> PushResult:
    """Send the image chunk by chunk, reading the board's acknowledgements, then wait for its verdict.

    Every read the board makes of a new chunk produces at least one acknowledgement, so waiting for one after each
    chunk (as espota.py does) cannot deadlock, and keeps the host at most one chunk ahead of the board's flash.
    """
    replies = bytearray()
    sent = 0
    conn.settimeout(timeouts.ack)
    try:
        for offset in range(0, len(image), CHUNK):
            chunk = image[offset : offset + CHUNK]
            conn.sendall(chunk)
            sent += len(chunk)
            data = conn.recv(64)
            if not data:
                return PushResult(False, _verdict(replies) or Failure.BROKEN_TRANSFER, _closed(replies, sent), sent)
            replies += data
            if progress is not None:
                progress(sent, len(image))
            if b"OK" not in replies and (verdict := _verdict(replies)) is not None:
                return PushResult(False, verdict, _text(replies), sent)
    except TimeoutError:
        return PushResult(False, Failure.BROKEN_TRANSFER, f"no acknowledgement for {timeouts.ack:g} s", sent)
    except OSError as exc:
        return PushResult(False, Failure.BROKEN_TRANSFER, f"connection lost: {exc}", sent)
    return _result(conn, replies, sent, timeouts.result)


def _result(conn: socket.socket, replies: bytearray, sent: int, timeout: float) -> PushResult:
    """After the last chunk: ``OK`` (anywhere in the acknowledgements: they are digits) or an error text."""
    deadline = time.monotonic() + timeout
    while True:
        if b"OK" in replies:
            return PushResult(True, None, "", sent)
        if (verdict := _verdict(replies)) is not None:
            return PushResult(False, verdict, _text(replies), sent)
        left = deadline - time.monotonic()
        if left <= 0:
            return PushResult(False, Failure.TIMEOUT, f"no confirmation within {timeout:g} s of the last byte", sent)
        try:
            readable, _w, _x = select.select([conn], [], [], left)
            if not readable:
                continue
            data = conn.recv(256)
        except OSError as exc:
            return PushResult(False, Failure.BROKEN_TRANSFER, f"connection lost: {exc}", sent)
        if not data:
            return PushResult(False, Failure.BROKEN_TRANSFER, _closed(replies, sent), sent)
        replies += data
        if len(replies) > MAX_REPLIES:
            return PushResult(False, Failure.BOARD_ERROR, "endless answer, not ArduinoOTA", sent)


def _verdict(replies: bytearray) -> Failure | None:
    """The failure the board's text reports, if any (``OK`` is checked first by the caller)."""
    text = bytes(replies).lower()
    if b"md5" in text:
        return Failure.MD5_REJECTED
    if b"error" in text or b"fail" in text:
        return Failure.BOARD_ERROR
    return None


def _text(replies: bytearray) -> str:
    """The board's error text without the acknowledgement digits before it."""
    return bytes(replies).decode("ascii", errors="replace").lstrip("0123456789").strip()[:120]


def _closed(replies: bytearray, sent: int) -> str:
    text = _text(replies)
    return f"the board closed the connection after {sent} bytes" + (f": {text}" if text else "")
