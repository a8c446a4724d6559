"""A simulated board's ArduinoOTA side: a real UDP + TCP receiver on a loopback address, for the espota tests.

It plays the ESP32 library's part (see telemetry/espota.py): it parses the invitation strictly, answers ``OK``,
connects back from its own address to the invitation's sender, reads the image acknowledging every read with the
number of bytes stored, checks the MD5 itself and answers ``OK`` or the library's error text. ``mode`` selects a
failure. Each board of a test gets its own 127.0.0.x address, all on the same OTA port, as a lab's boards do.
"""

from __future__ import annotations

import enum
import hashlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class Mode(enum.StrEnum):
    OK = "ok"
    SILENT = "silent"  # the invitation is never answered (board off, UDP blocked)
    BUSY = "busy"  # the board is in another update: ArduinoOTA ignores invitations while not idle
    REFUSE = "refuse"  # a reply other than OK
    AUTH = "auth"  # the board has an OTA password: AUTH challenge
    NO_CONNECT = "no-connect"  # OK, then never connects back
    WRONG_MD5 = "wrong-md5"  # a byte is corrupted while stored: the board's MD5 check fails
    BROKEN = "broken"  # the connection is closed halfway
    STALL = "stall"  # stops reading and acknowledging halfway
    NO_RESULT = "no-result"  # reads everything, never says OK


@dataclass
class Receiver:
    ip: str
    port: int
    mode: Mode = Mode.OK
    on_flashed: Callable[[bytes], None] | None = None
    invitations: list[str] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._udp.bind((self.ip, self.port))
        self._udp.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"ota-receiver-{self.ip}")
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._udp.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self._udp.recvfrom(128)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                self._handle(data, sender)
            except Exception as exc:  # recorded for the test to assert on
                self.errors.append(repr(exc))

    def _handle(self, data: bytes, sender: tuple[str, int]) -> None:
        text = data.decode("ascii")
        self.invitations.append(text)
        # ArduinoOTA: "<cmd> <port> <size> <md5>\n", command 0 (flash) or 100 (filesystem), a 32-digit MD5.
        assert text.endswith("\n"), text
        command, port, size, md5 = text.split()
        assert command == "0" and len(md5) == 32 and int(size) > 0, text
        if self.mode in (Mode.SILENT, Mode.BUSY):
            return
        if self.mode is Mode.REFUSE:
            self._udp.sendto(b"ERR", sender)
            return
        if self.mode is Mode.AUTH:
            self._udp.sendto(b"AUTH 0123456789abcdef0123456789abcdef", sender)
            return
        self._udp.sendto(b"OK", sender)
        if self.mode is Mode.NO_CONNECT:
            return
        self._receive(sender[0], int(port), int(size), md5)

    def _receive(self, host: str, port: int, size: int, md5: str) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as conn:
            conn.bind((self.ip, 0))  # a board has one address: it connects from it
            conn.connect((host, port))
            conn.settimeout(10)
            stored = bytearray()
            while len(stored) < size:
                if self.mode in (Mode.BROKEN, Mode.STALL) and len(stored) >= size // 2:
                    if self.mode is Mode.STALL:
                        time.sleep(3)
                    return
                chunk = conn.recv(min(1460, size - len(stored)))
                if not chunk:
                    return
                stored += chunk
                conn.sendall(str(len(chunk)).encode())
            if self.mode is Mode.WRONG_MD5:
                stored[0] ^= 0xFF
            if self.mode is Mode.NO_RESULT:
                time.sleep(3)
                return
            if hashlib.md5(stored, usedforsecurity=False).hexdigest() != md5:
                conn.sendall(b"Error[9]: MD5 Check Failed\n")
                return
            self.images.append(bytes(stored))
            conn.sendall(b"OK")
        if self.on_flashed is not None:
            self.on_flashed(bytes(stored))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
