"""The broker hardening of deploy/: accounts, ACL, client ids and packet size, enforced by a real Mosquitto.

Every broker here runs deploy/mosquitto/fabomatic.conf itself, with only its paths and ports moved into the test.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import TypedDict, Unpack

import paho.mqtt.client as mqtt
import pytest
from django.core.management import CommandError, call_command
from pytest_django import Settings

from machines.models import Machine
from telemetry import credentials
from telemetry.models import BoardCredential, SwitchCredential
from telemetry.mqtt import Bridge

from .boards import reconnect_delay
from .conftest import Lab
from .services import _binary, free_port, wait_for_port

pytestmark = [pytest.mark.django_db, pytest.mark.broker]

ROOT = Path(__file__).resolve().parent.parent
BACKEND = ("fabomatic-backend", "backend-pass-123")
SWITCH_TOPIC = "shellies/shelly1-ABC123/relay/0/command"  # a Shelly Gen1 relay, declared for machine 1
MAX_PACKET = 4096


@dataclass
class SecureBroker:
    port: int  # the devices' listener (1883 in production)
    backend_port: int  # the listener of the bridge and the portal (127.0.0.1:1884 in production)
    secrets: dict[str, str]
    pid: int


def broker_files(tmp: str) -> list[str]:
    return ["--password-file", f"{tmp}/passwd", "--backend-password-file", f"{tmp}/backend", "--acl-file", f"{tmp}/acl"]


@pytest.fixture
def secure_broker(lab: Lab, settings: Settings) -> Iterator[SecureBroker]:
    settings.MQTT = {**settings.MQTT, "USERNAME": BACKEND[0], "PASSWORD": BACKEND[1], "TOPIC": "machine"}
    with tempfile.TemporaryDirectory(prefix="mosquitto-acl-") as tmp:
        out = StringIO()
        call_command("mosquitto_credentials", *broker_files(tmp), "--switch", "1", SWITCH_TOPIC, stdout=out)
        secrets = dict(line.split("\t")[:2] for line in out.getvalue().splitlines() if "\t" in line)
        port, backend_port = free_port(), free_port()
        # The production file, with the paths and ports of this test (its TLS listener stays commented out).
        conf = (ROOT / "deploy" / "mosquitto" / "fabomatic.conf").read_text()
        for shipped, here in [
            ("listener 1883\n", f"listener {port} 127.0.0.1\n"),
            ("listener 1884 127.0.0.1\n", f"listener {backend_port} 127.0.0.1\n"),
            ("/var/lib/fabomatic/mosquitto/passwd\n", f"{tmp}/passwd\n"),
            ("/var/lib/fabomatic/mosquitto/backend-passwd\n", f"{tmp}/backend\n"),
            ("/var/lib/fabomatic/mosquitto/acl\n", f"{tmp}/acl\n"),
        ]:
            assert shipped in conf, f"fabomatic.conf no longer has {shipped!r}"
            conf = conf.replace(shipped, here)
        # Started as root, Mosquitto would switch to its own user, who cannot read this private temp dir.
        stay = "user root\n" if os.geteuid() == 0 else ""
        Path(f"{tmp}/mosquitto.conf").write_text(conf + "\npersistence false\n" + stay)
        proc = subprocess.Popen(
            [_binary("mosquitto", "/usr/sbin/mosquitto"), "-c", f"{tmp}/mosquitto.conf"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            wait_for_port(backend_port)
            yield SecureBroker(port=port, backend_port=backend_port, secrets=secrets, pid=proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


class ClientOptions(TypedDict, total=False):
    """The optional arguments of :class:`Client`."""

    client_id: str
    will: tuple[str, str] | None


class Client:
    """A connected paho client whose received messages land in a queue."""

    def __init__(
        self, port: int, username: str, password: str, client_id: str = "", will: tuple[str, str] | None = None
    ) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected: queue.Queue[mqtt.ReasonCode] = queue.Queue()
        self.disconnected: queue.Queue[mqtt.ReasonCode] = queue.Queue()
        self.subscribed: queue.Queue[int] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if username:
            self.client.username_pw_set(username, password)
        if will:
            self.client.will_set(*will, qos=1, retain=True)
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.put(rc)
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnected.put(rc)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.put(mid)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.reason = self.connected.get(timeout=10)

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        self.subscribed.get(timeout=10)

    def publish(self, topic: str, payload: str | bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(timeout=10)

    def next_message(self) -> tuple[str, bytes]:
        return self.messages.get(timeout=10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients(secure_broker: SecureBroker) -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def connect(
    broker: SecureBroker,
    clients: list[Client],
    username: str,
    password: str,
    *,
    backend: bool = False,
    **kw: Unpack[ClientOptions],
) -> Client:
    client = Client(broker.backend_port if backend else broker.port, username, password, **kw)
    clients.append(client)
    return client


def device(broker: SecureBroker, clients: list[Client], username: str, **kw: Unpack[ClientOptions]) -> Client:
    return connect(broker, clients, username, broker.secrets[username], **kw)


# --- Accounts and ACL --------------------------------------------------------------------------------


def test_it_writes_one_account_per_device_and_prints_each_secret_once(secure_broker: SecureBroker, tmp_path) -> None:
    assert set(secure_broker.secrets) == {"board-1", "board-2", "switch-1"}
    assert BoardCredential.objects.count() == 2 and SwitchCredential.objects.count() == 1
    assert all(c.password_hash.startswith("$7$101$") for c in BoardCredential.objects.all())
    out = StringIO()
    # Real files: the command replaces its targets atomically (as root, /dev/null would be replaced too).
    call_command("mosquitto_credentials", *broker_files(str(tmp_path)), stdout=out)
    devices, backend = (tmp_path / "passwd").read_text(), (tmp_path / "backend").read_text()
    assert "board-1:$7$101$" in devices and "switch-1:$7$101$" in devices and BACKEND[0] not in devices
    assert backend.startswith(f"{BACKEND[0]}:$7$101$") and len(backend.splitlines()) == 1
    assert "topic write machine/1" in (tmp_path / "acl").read_text()
    assert "board-" not in out.getvalue().split("Wrote")[0]  # existing secrets are never shown again


def test_the_acl_gives_each_device_only_its_own_topics(secure_broker: SecureBroker) -> None:
    assert credentials.acl_file_text() == (
        "# Generated by `manage.py mosquitto_credentials`: do not edit, re-run it instead.\n\n"
        "user fabomatic-backend\ntopic readwrite machine/#\ntopic readwrite stats/#\n\n"
        "user board-1\ntopic write machine/1\ntopic read machine/1/reply\ntopic read machine/1/request\n"
        f"topic write {SWITCH_TOPIC}\n\n"
        "user board-2\ntopic write machine/2\ntopic read machine/2/reply\ntopic read machine/2/request\n\n"
        f"user switch-1\ntopic read {SWITCH_TOPIC}\n"
    )


def test_a_board_cannot_publish_to_another_machines_topic(secure_broker: SecureBroker, clients: list[Client]) -> None:
    backend = connect(secure_broker, clients, *BACKEND, backend=True)
    assert not backend.reason.is_failure
    backend.subscribe("machine/#")
    board1 = device(secure_broker, clients, "board-1")
    assert not board1.reason.is_failure

    board1.publish("machine/2", '{"action":"checkuser","uid":"aabbccd1"}')  # denied by the ACL, silently
    board1.publish("machine/1", '{"action":"alive"}')  # allowed; same connection, so delivered in order

    assert backend.next_message() == ("machine/1", b'{"action":"alive"}')
    assert backend.messages.empty()


def test_a_board_reads_only_its_own_reply_and_request_topics(
    secure_broker: SecureBroker, clients: list[Client]
) -> None:
    backend = connect(secure_broker, clients, *BACKEND, backend=True)
    board1 = device(secure_broker, clients, "board-1")
    board1.subscribe("machine/#")

    backend.publish("machine/2/reply", '{"request_ok":true}')
    backend.publish("machine/2/request", '{"action":"start"}')
    backend.publish("machine/1/request", '{"action":"stop"}')
    backend.publish("machine/1/reply", '{"request_ok":true}')

    assert board1.next_message() == ("machine/1/request", b'{"action":"stop"}')
    assert board1.next_message() == ("machine/1/reply", b'{"request_ok":true}')


def test_the_backend_account_reads_and_writes_its_stats(secure_broker: SecureBroker, clients: list[Client]) -> None:
    backend = connect(secure_broker, clients, *BACKEND, backend=True)
    backend.subscribe("stats/#")
    backend.publish("stats/bridge", '{"Connected":true}')
    assert backend.next_message() == ("stats/bridge", b'{"Connected":true}')


@pytest.mark.parametrize(
    ("listener", "username", "password"),
    [
        ("devices", "board-1", "wrong-secret"),
        ("devices", "board-9", "whatever"),
        ("devices", "", ""),
        ("devices", *BACKEND),
        ("backend", "board-1", None),
        ("backend", "switch-1", None),
        ("backend", "", ""),
    ],
    ids=[
        "wrong password",
        "unknown board",
        "anonymous",
        "backend on the devices' listener",
        "board on the backend's listener",
        "switch on the backend's listener",
        "anonymous on the backend's listener",
    ],
)
def test_a_wrong_or_missing_password_is_refused(
    secure_broker: SecureBroker, clients: list[Client], listener: str, username: str, password: str | None
) -> None:
    password = secure_broker.secrets[username] if password is None else password
    client = connect(secure_broker, clients, username, password, backend=listener == "backend")
    assert client.reason.is_failure


def test_a_rotated_secret_replaces_the_old_one(secure_broker: SecureBroker) -> None:
    old_hash = BoardCredential.objects.get(machine_id=1).password_hash
    issued = credentials.issue(Machine.objects.get(pk=1))
    assert issued.username == "board-1" and issued.secret != secure_broker.secrets["board-1"]
    assert BoardCredential.objects.get(machine_id=1).password_hash != old_hash
    assert f"board-1:{BoardCredential.objects.get(machine_id=1).password_hash}" in credentials.password_file_text()


def test_writing_to_a_device_writes_into_it_instead_of_replacing_it(tmp_path) -> None:
    """As root, an atomic replace of /dev/null turned it into a regular file and broke the machine."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        credentials._write_atomically(fifo, "user board-1\n")
        assert os.read(reader, 100) == b"user board-1\n"
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still a pipe, not replaced by a file
    finally:
        os.close(reader)


# --- Client ids are bound to accounts --------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_boards_secret_cannot_take_over_the_bridges_session(
    secure_broker: SecureBroker, clients: list[Client], settings: Settings
) -> None:
    """Before: a client logging in as board-2 with the bridge's client id kicked the bridge off (1 of 14 answered)."""
    settings.MQTT = {**settings.MQTT, "HOST": "127.0.0.1", "PORT": secure_broker.backend_port}
    bridge = Bridge(housekeeping_every=3600)  # the default client id
    bridge.start()
    try:
        assert bridge.subscribed.wait(10), "bridge did not subscribe"
        board1 = device(secure_broker, clients, "board-1")
        board1.subscribe("machine/1/reply")
        # An attacker with board-2's secret and the bridge's id, reconnecting at once whenever it is kicked off.
        attacker = device(secure_broker, clients, "board-2", client_id=bridge.client_id)
        reconnect_delay(attacker.client, 0.1, 0.2)
        assert not attacker.reason.is_failure  # a valid account: it gets in, as board-2
        on_backend = connect(secure_broker, clients, "board-2", secure_broker.secrets["board-2"], backend=True)
        assert on_backend.reason.is_failure  # and nowhere else

        answered = 0
        for _ in range(14):
            board1.publish("machine/1", '{"action":"checkmachine"}', qos=0)
            try:
                board1.messages.get(timeout=2)  # the board's own timeout
                answered += 1
            except queue.Empty:
                pass
            time.sleep(0.1)
        assert answered == 14
        assert bridge.connected.is_set() and attacker.disconnected.empty()
    finally:
        bridge.stop()


def test_devices_that_send_the_same_client_id_keep_their_own_sessions(
    secure_broker: SecureBroker, clients: list[Client]
) -> None:
    """The firmware draws BOARD0-BOARD999 at random (M19): two boards that draw the same id no longer collide."""
    backend = connect(secure_broker, clients, *BACKEND, backend=True)
    backend.subscribe("machine/#")
    board1 = device(secure_broker, clients, "board-1", client_id="BOARD417")
    board2 = device(secure_broker, clients, "board-2", client_id="BOARD417")
    shelly = device(secure_broker, clients, "switch-1", client_id="BOARD417")
    board1.publish("machine/1", '{"action":"alive"}')
    board2.publish("machine/2", '{"action":"alive"}')
    assert {backend.next_message()[0], backend.next_message()[0]} == {"machine/1", "machine/2"}
    assert board1.disconnected.empty() and board2.disconnected.empty() and shelly.disconnected.empty()


def test_the_bridges_default_client_id_is_unguessable() -> None:
    """Random per process (several bridges may share a broker), never just host and PID as before."""
    env = {**os.environ, "MQTT_CLIENT_ID": "", "DJANGO_SETTINGS_MODULE": "fabomatic.settings"}
    code = "from django.conf import settings; print(settings.MQTT['CLIENT_ID'])"
    ids = [
        subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    ]
    assert all(re.fullmatch(r"fabomatic-.+-\d+-[0-9a-f]{16}", i) for i in ids), ids
    assert ids[0] != ids[1]


# --- Packet size -----------------------------------------------------------------------------------


def test_a_publish_over_the_packet_limit_disconnects_its_sender_and_reaches_nobody(
    secure_broker: SecureBroker, clients: list[Client]
) -> None:
    backend = connect(secure_broker, clients, *BACKEND, backend=True)
    backend.subscribe("machine/#")
    board1 = device(secure_broker, clients, "board-1")
    board1.publish("machine/1", b"x" * (MAX_PACKET + 1), qos=0)
    assert board1.disconnected.get(timeout=5) is not None
    board1.close()

    board1 = device(secure_broker, clients, "board-1")
    near_limit = b"y" * (MAX_PACKET - 100)  # what the limit still lets through: 8x the largest real message
    board1.publish("machine/1", near_limit, qos=0)
    board1.publish("machine/1", '{"action":"checkmachine"}', qos=0)
    assert backend.next_message() == ("machine/1", near_limit)
    assert backend.next_message() == ("machine/1", b'{"action":"checkmachine"}')


def _mqtt_string(text: str) -> bytes:
    return struct.pack("!H", len(text.encode())) + text.encode()


def _remaining_length(n: int) -> bytes:
    out = b""
    while True:
        n, digit = divmod(n, 128)
        out += bytes([digit | (0x80 if n else 0)])
        if not n:
            return out


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_100_mb_publish_is_refused_at_its_header_without_costing_memory(
    secure_broker: SecureBroker, clients: list[Client]
) -> None:
    """Before: Mosquitto read all of it (RSS 9 -> 107 MB) and delivered all 100 MB to the bridge."""
    backend = connect(secure_broker, clients, *BACKEND, backend=True)
    backend.subscribe("machine/#")
    before = _rss_kb(secure_broker.pid)
    with socket.create_connection(("127.0.0.1", secure_broker.port)) as sock:
        login = _mqtt_string("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 30) + _mqtt_string("")
        login += _mqtt_string("board-1") + _mqtt_string(secure_broker.secrets["board-1"])
        sock.sendall(b"\x10" + _remaining_length(len(login)) + login)
        assert sock.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
        topic = _mqtt_string("machine/1")
        sock.sendall(b"\x30" + _remaining_length(len(topic) + 100 * 2**20) + topic)
        sent_mb = 0
        try:
            for _ in range(100):
                sock.sendall(b"z" * 2**20)
                sent_mb += 1
        except OSError:  # the broker hung up after the fixed header
            pass
    assert sent_mb < 100, "the broker read all of it"
    assert _rss_kb(secure_broker.pid) - before < 4096
    board1 = device(secure_broker, clients, "board-1")
    board1.publish("machine/1", '{"action":"checkmachine"}', qos=0)
    assert backend.next_message() == ("machine/1", b'{"action":"checkmachine"}')  # nothing came before it


# --- Shelly power switches (docs/protocol.md §2.9) -------------------------------------------------


def test_a_board_switches_its_machines_shelly(secure_broker: SecureBroker, clients: list[Client]) -> None:
    # Like a Shelly: its own client id, and a retained last will announcing it offline (accepted: retain stays on).
    shelly = device(
        secure_broker, clients, "switch-1", client_id="shelly1-ABC123", will=("shellies/shelly1-ABC123/online", "false")
    )
    assert not shelly.reason.is_failure
    shelly.subscribe(SWITCH_TOPIC)
    board1 = device(secure_broker, clients, "board-1")
    board1.publish(SWITCH_TOPIC, "on", qos=0)  # as the firmware does: plain text, QoS 0, no retain
    board1.publish(SWITCH_TOPIC, "off", qos=0)
    assert shelly.next_message() == (SWITCH_TOPIC, b"on")
    assert shelly.next_message() == (SWITCH_TOPIC, b"off")


def test_only_its_machines_board_may_switch_a_shelly(secure_broker: SecureBroker, clients: list[Client]) -> None:
    shelly = device(secure_broker, clients, "switch-1")
    shelly.subscribe(SWITCH_TOPIC)
    # Each publish is at QoS 1: once acknowledged, the broker has routed it (or dropped it).
    device(secure_broker, clients, "board-2").publish(SWITCH_TOPIC, "on")
    connect(secure_broker, clients, *BACKEND, backend=True).publish(SWITCH_TOPIC, "on")
    shelly.publish(SWITCH_TOPIC, "on")
    device(secure_broker, clients, "board-1").publish(SWITCH_TOPIC, "off")
    assert shelly.next_message() == (SWITCH_TOPIC, b"off")
    assert shelly.messages.empty()


def test_a_switch_reads_only_its_topic_and_publishes_nothing(
    secure_broker: SecureBroker, clients: list[Client]
) -> None:
    backend = connect(secure_broker, clients, *BACKEND, backend=True)
    backend.subscribe("machine/+")  # as the bridge does
    shelly = device(secure_broker, clients, "switch-1")
    for topic in ("machine/#", "stats/#", SWITCH_TOPIC):
        shelly.subscribe(topic)
    shelly.publish("machine/1", '{"action":"startuse","uid":"aabbccd1"}')  # denied: not a board
    backend.publish("machine/1/request", '{"request_type":"start","uid":"aabbccd1"}')
    backend.publish("stats/bridge", '{"Connected":true}')
    board1 = device(secure_broker, clients, "board-1")
    board1.publish("machine/1", '{"action":"alive"}')
    board1.publish(SWITCH_TOPIC, "on")
    assert shelly.next_message() == (SWITCH_TOPIC, b"on")
    assert backend.next_message() == ("machine/1", b'{"action":"alive"}')


def test_a_switch_is_moved_rotated_and_removed_by_the_command(lab: Lab, tmp_path, settings) -> None:
    settings.MQTT = {**settings.MQTT, "USERNAME": BACKEND[0], "PASSWORD": BACKEND[1], "TOPIC": "machine"}

    def run(*args: str) -> str:
        out = StringIO()
        call_command("mosquitto_credentials", *broker_files(str(tmp_path)), *args, stdout=out)
        return out.getvalue().split("Wrote")[0]

    assert "switch-1\t" in run("--switch", "1", SWITCH_TOPIC)
    first_hash = SwitchCredential.objects.get().password_hash
    assert run("--switch", "1", "lab/laser/power") == ""  # moved: same account, same secret
    assert SwitchCredential.objects.get().password_hash == first_hash
    acl = (tmp_path / "acl").read_text()
    assert "topic write lab/laser/power" in acl and "topic read lab/laser/power" in acl and SWITCH_TOPIC not in acl
    assert "switch-1\t" in run("--rotate-switch", "1")
    assert SwitchCredential.objects.get().password_hash != first_hash
    run("--remove-switch", "1")
    assert "switch-" not in (tmp_path / "passwd").read_text() and "lab/laser" not in (tmp_path / "acl").read_text()


@pytest.mark.parametrize(
    "topic",
    [
        "machine/2",
        "MACHINE/2/reply",
        "stats/fabomatic",
        "shellies/+/relay/0/command",
        "shellies/#",
        "$SYS/broker",
        "shellies/a b",
        "shellies/x\nuser board-2",
        SWITCH_TOPIC,  # machine 1's already
    ],
)
def test_a_switch_topic_outside_the_switchs_own_is_refused(lab: Lab, tmp_path, settings, topic: str) -> None:
    settings.MQTT = {**settings.MQTT, "TOPIC": "machine"}
    credentials.declare_switch(lab.laser, SWITCH_TOPIC)
    Machine.objects.create(id=3, name="NEW", type=lab.printer.type)
    with pytest.raises(CommandError, match="Switch topic"):
        call_command("mosquitto_credentials", *broker_files(str(tmp_path)), "--switch", "3", topic, stdout=StringIO())
    # All or nothing: machine 3's new board secret, never shown, was not kept either.
    assert not BoardCredential.objects.filter(machine_id=3).exists()
    assert list(SwitchCredential.objects.values_list("machine_id", "topic")) == [(1, SWITCH_TOPIC)]


# --- Home Assistant discovery (integrations/homeassistant.py) ------------------------------------------------------


@pytest.fixture
def ha_on(settings: Settings) -> None:
    settings.HA_DISCOVERY = True
    settings.HA_DISCOVERY_PREFIX = "homeassistant"


def test_with_ha_discovery_the_backend_writes_its_prefix_and_no_device_may(
    ha_on: None, secure_broker: SecureBroker, clients: list[Client]
) -> None:
    assert (
        "user fabomatic-backend\ntopic readwrite machine/#\ntopic readwrite stats/#\ntopic readwrite homeassistant/#\n"
        in (credentials.acl_file_text())
    )
    backend = connect(secure_broker, clients, *BACKEND, backend=True)
    backend.subscribe("homeassistant/#")
    board1 = device(secure_broker, clients, "board-1")
    board1.subscribe("homeassistant/#")
    board1.publish("homeassistant/sensor/fabomatic_1/state/config", "{}")  # denied by the ACL, silently
    backend.publish("homeassistant/fabomatic/1/state", '{"state":"free"}')
    assert backend.next_message() == ("homeassistant/fabomatic/1/state", b'{"state":"free"}')
    assert backend.messages.empty()
    time.sleep(0.3)
    assert board1.messages.empty()  # a board reads nothing of it either


def test_without_ha_discovery_the_backend_may_not_write_there(
    secure_broker: SecureBroker, clients: list[Client]
) -> None:
    backend = connect(secure_broker, clients, *BACKEND, backend=True)
    backend.subscribe("homeassistant/#")
    backend.subscribe("machine/#")
    backend.publish("homeassistant/fabomatic/1/state", '{"state":"free"}')  # denied: delivered to nobody
    backend.publish("machine/1/reply", "{}")
    assert backend.next_message() == ("machine/1/reply", b"{}")
