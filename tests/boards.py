"""A simulated Fab-O-Matic board for the tests: a real paho client speaking the firmware's payloads (§2)."""

from __future__ import annotations

import itertools
import json
import queue
import socket
import threading
from typing import TYPE_CHECKING, Any, cast

import paho.mqtt.client as mqtt

if TYPE_CHECKING:
    from paho.mqtt.client import SocketLike  # defined for type checkers only

REPLY_TIMEOUT = 2.0  # the board's own timeout (docs/protocol.md §3.2)
_ids = itertools.count(1)


def reconnect_delay(client: mqtt.Client, min_delay: float, max_delay: float) -> None:
    """``client.reconnect_delay_set`` with the sub-second delays the tests use."""
    # paho annotates the delays as int, but only doubles them, caps them and adds them to time.monotonic().
    client.reconnect_delay_set(min_delay, max_delay)  # type: ignore[arg-type]


def _no_delay(client: mqtt.Client, userdata: Any, sock: SocketLike) -> None:
    """No Nagle delay on the board's socket: each small request leaves at once."""
    # paho's SocketLike protocol lists only what paho calls; over TCP the socket is a socket.socket.
    cast(socket.socket, sock).setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class SimBoard:
    def __init__(self, port: int, machine_id: int | str, topic: str = "machine") -> None:
        self.machine_id = machine_id
        self.topic = f"{topic}/{machine_id}"
        self.replies: queue.Queue[bytes] = queue.Queue()
        self.commands: queue.Queue[bytes] = queue.Queue()
        self._ready = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"BOARD{next(_ids)}-{id(self)}", clean_session=True
        )
        self.client.on_socket_open = _no_delay
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.on_message = self._on_message
        reconnect_delay(self.client, 0.2, 1)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self._ready.wait(5):
            raise RuntimeError("simulated board could not subscribe")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._ready.clear()
        client.subscribe([(f"{self.topic}/reply", 0), (f"{self.topic}/request", 0)])

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        (self.replies if msg.topic.endswith("/reply") else self.commands).put(msg.payload)

    def wait_ready(self, timeout: float = 20) -> bool:
        return self._ready.wait(timeout)

    def send(self, payload: dict[str, Any] | bytes | str) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        self.client.publish(self.topic, payload, qos=0).wait_for_publish(2)

    def ask(self, payload: dict[str, Any] | bytes | str, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        """Publish a request and return the one reply, which must come within the board's 2 s."""
        assert self.replies.empty(), f"unsolicited reply pending: {self.replies.queue[0]!r}"
        self.send(payload)
        try:
            raw = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no reply within {timeout}s to {payload!r}") from None
        assert len(raw) <= 280, f"reply of {len(raw)} bytes overflows the board buffer"
        return json.loads(raw)

    def assert_no_reply(self, payload: dict[str, Any] | bytes | str) -> None:
        """Send something that must get no reply: the next reply must then be the checkmachine's that follows it.

        The bridge answers in order, so a reply to ``payload`` would arrive first.
        """
        self.send(payload)
        reply = self.ask({"action": "checkmachine"})
        assert "allowed" in reply or reply == {"request_ok": False, "message": "Invalid machine ID"}, reply
        try:
            extra = self.replies.get(timeout=0.3)  # a second reply would be right behind the first
        except queue.Empty:
            return
        raise AssertionError(f"a second reply arrived: {extra!r}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def time_passes(seconds: float) -> None:
    """Make ``seconds`` pass for the history: every recorded time (machines heard, uses) moves that far back.

    The bridge judges a board's durations by its own clock (a 65 s session needs 65 s since it opened); tests
    cannot wait that long, so they move the past instead. The bridge's pending heartbeat stamps are written first.
    """
    from datetime import timedelta

    from django.db.models import F

    from machines.models import Machine, Use
    from telemetry import fastpath

    fastpath.flush_heartbeats()
    delta = timedelta(seconds=seconds)
    Machine.objects.filter(last_seen__isnull=False).update(last_seen=F("last_seen") - delta)
    Machine.objects.filter(heard_live_at__isnull=False).update(heard_live_at=F("heard_live_at") - delta)
    Use.objects.update(started_at=F("started_at") - delta, last_seen=F("last_seen") - delta)
    Use.objects.filter(ended_at__isnull=False).update(ended_at=F("ended_at") - delta)


# --- A board that acts on the replies as the firmware does (docs/protocol.md §2.1, §2.2, §3.4) --------------------

# The JSON type of every field the firmware reads, per reply (bool is checked apart from int: True is an int too).
REPLY_TYPES: dict[str, dict[str, type]] = {
    "checkmachine": {
        "request_ok": bool,
        "is_valid": bool,
        "maintenance": bool,
        "allowed": bool,
        "name": str,
        "logoff": int,
        "type": int,
        "grace": int,
        "description": str,
    },
    "checkuser": {"request_ok": bool, "is_valid": bool, "level": int, "name": str, "missing_auth": bool},
    "startuse": {"request_ok": bool, "message": str},
    "inuse": {"request_ok": bool, "message": str},
    "stopuse": {"request_ok": bool, "message": str},
    "maintenance": {"request_ok": bool, "message": str},
}


def check_reply_types(action: str, reply: dict[str, Any]) -> None:
    """Every field the firmware reads is there, with its JSON type (a missing boolean would read as false, a
    missing string as "null" on the LCD)."""
    expected = REPLY_TYPES[action]
    if action == "checkmachine" and reply.get("request_ok") is False:
        expected = {"request_ok": bool, "message": str}
    for field, kind in expected.items():
        assert field in reply, f"{action} reply lacks {field}: {reply}"
        value = reply[field]
        assert isinstance(value, kind) and (kind is bool or not isinstance(value, bool)), (action, field, reply)
        if isinstance(value, int):
            assert 0 <= value <= 65535, (action, field, reply)


class FirmwareBoard(SimBoard):
    """A simulated board that keeps the state the firmware keeps and decides at the card reader as it does.

    State: the last valid ``checkmachine`` reply (boot defaults until then: allowed, no maintenance, M18) and the
    session in progress. :meth:`swipe` is the firmware's login: ``checkuser``; refused → "Unknown card"; allowed but
    the machine not allowed → "Blocked by admins"; maintenance and level < 2 → "Blocked for maintenance"; level 2
    with maintenance → the 10-second hold (``maintenance``) when ``hold``; then ``startuse``; and about 1 s after
    every swipe on a free machine, ``checkmachine``. One request in flight, a 2 s deadline, exactly one reply each
    (:meth:`SimBoard.ask`), and the reply fields' types checked.
    """

    def __init__(self, port: int, machine_id: int, topic: str = "machine") -> None:
        super().__init__(port, machine_id, topic)
        self.allowed, self.maintenance, self.description = True, False, ""  # boot defaults
        self.user: str | None = None
        self.level = 0

    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        reply = self.ask(payload)
        check_reply_types(str(payload["action"]), reply)
        return reply

    def check_machine(self) -> dict[str, Any]:
        reply = self.request({"action": "checkmachine"})
        if reply["request_ok"] and reply["is_valid"]:
            self.allowed, self.maintenance, self.description = (
                reply["allowed"],
                reply["maintenance"],
                reply["description"],
            )
        return reply

    def tick(self, duration: int = 30) -> None:
        """The 30 s network task: ``checkmachine``, and ``inuse`` while someone is logged in."""
        self.check_machine()
        if self.user is not None:
            assert self.request({"action": "inuse", "uid": self.user, "duration": duration})["request_ok"] is True

    def swipe(self, uid: str, *, hold: bool = False) -> str:
        """A card on the reader of a free machine; returns the LCD's first row."""
        assert self.user is None, "the machine is busy: log out first"
        reply = self.request({"action": "checkuser", "uid": uid})
        assert reply["request_ok"] is True, reply  # request_ok false would send the board to its offline cache
        level = reply["level"] if reply["is_valid"] else 0
        if level == 0:
            screen = "Unknown card"
        elif not self.allowed:
            screen = "Blocked by admins"
        elif self.maintenance and level < 2:
            screen = "Blocked for maintenance"
        else:
            screen = "Use started"
            if self.maintenance and hold:
                recorded = self.request({"action": "maintenance", "uid": uid})["request_ok"]
                screen = "Maintenance recorded" if recorded else "Error"
                if recorded:
                    self.maintenance = False
            assert self.request({"action": "startuse", "uid": uid})["request_ok"] is True
            self.user, self.level = uid, level
        self.check_machine()
        return screen

    def log_out(self, duration: int) -> dict[str, Any]:
        """The same card again (or the auto-logoff): ``stopuse`` with the board's duration."""
        assert self.user is not None, "nobody is logged in"
        reply = self.request({"action": "stopuse", "uid": self.user, "duration": duration})
        self.user, self.level = None, 0
        return reply
