"""The broker hardening of deploy/: per-board accounts and an ACL, enforced by a real Mosquitto."""

from __future__ import annotations

import os
import queue
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from django.core.management import call_command

from machines.models import Machine
from telemetry import credentials
from telemetry.models import BoardCredential

from .conftest import Lab
from .services import _binary, free_port, wait_for_port

pytestmark = [pytest.mark.django_db, pytest.mark.broker]

ROOT = Path(__file__).resolve().parent.parent
BACKEND = ("fabomatic-backend", "backend-pass-123")


@dataclass
class SecureBroker:
    port: int
    secrets: dict[str, str]


@pytest.fixture
def secure_broker(lab: Lab, settings: object) -> Iterator[SecureBroker]:
    settings.MQTT = {**settings.MQTT, "USERNAME": BACKEND[0], "PASSWORD": BACKEND[1], "TOPIC": "machine"}
    with tempfile.TemporaryDirectory(prefix="mosquitto-acl-") as tmp:
        out = StringIO()
        call_command(
            "mosquitto_credentials", "--password-file", f"{tmp}/passwd", "--acl-file", f"{tmp}/acl", stdout=out
        )
        secrets = dict(line.split("\t")[:2] for line in out.getvalue().splitlines() if line.startswith("board-"))
        port = free_port()
        # The production file, with the paths and port of this test (its TLS listener stays commented out).
        conf = (ROOT / "deploy" / "mosquitto" / "fabomatic.conf").read_text()
        conf = (
            conf.replace("listener 1883", f"listener {port} 127.0.0.1")
            .replace("/var/lib/fabomatic/mosquitto/passwd", f"{tmp}/passwd")
            .replace("/var/lib/fabomatic/mosquitto/acl", f"{tmp}/acl")
        )
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
            yield SecureBroker(port=port, secrets=secrets)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


class Client:
    """A connected paho client whose received messages land in a queue."""

    def __init__(self, port: int, username: str, password: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected: queue.Queue[mqtt.ReasonCode] = queue.Queue()
        self.subscribed: queue.Queue[int] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.put(rc)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.put(mid)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.reason = self.connected.get(timeout=10)

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        self.subscribed.get(timeout=10)

    def publish(self, topic: str, payload: str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)

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


def connect(broker: SecureBroker, clients: list[Client], username: str, password: str) -> Client:
    client = Client(broker.port, username, password)
    clients.append(client)
    return client


def test_it_writes_one_account_per_machine_and_prints_each_secret_once(secure_broker: SecureBroker, tmp_path) -> None:
    assert set(secure_broker.secrets) == {"board-1", "board-2"}
    assert BoardCredential.objects.count() == 2
    assert all(c.password_hash.startswith("$7$101$") for c in BoardCredential.objects.all())
    out = StringIO()
    # Real files: the command replaces its targets atomically (as root, /dev/null would be replaced too).
    passwords, acl = tmp_path / "passwords", tmp_path / "acl"
    call_command("mosquitto_credentials", "--password-file", str(passwords), "--acl-file", str(acl), stdout=out)
    assert "board-1:$7$101$" in passwords.read_text() and "topic write machine/1" in acl.read_text()
    assert "board-" not in out.getvalue().split("Wrote")[0]  # existing secrets are never shown again


def test_a_board_cannot_publish_to_another_machines_topic(secure_broker: SecureBroker, clients: list[Client]) -> None:
    backend = connect(secure_broker, clients, *BACKEND)
    assert not backend.reason.is_failure
    backend.subscribe("machine/#")
    board1 = connect(secure_broker, clients, "board-1", secure_broker.secrets["board-1"])
    assert not board1.reason.is_failure

    board1.publish("machine/2", '{"action":"checkuser","uid":"aabbccd1"}')  # denied by the ACL, silently
    board1.publish("machine/1", '{"action":"alive"}')  # allowed; same connection, so delivered in order

    assert backend.next_message() == ("machine/1", b'{"action":"alive"}')
    assert backend.messages.empty()


def test_a_board_reads_only_its_own_reply_and_request_topics(
    secure_broker: SecureBroker, clients: list[Client]
) -> None:
    backend = connect(secure_broker, clients, *BACKEND)
    board1 = connect(secure_broker, clients, "board-1", secure_broker.secrets["board-1"])
    board1.subscribe("machine/#")

    backend.publish("machine/2/reply", '{"request_ok":true}')
    backend.publish("machine/2/request", '{"action":"start"}')
    backend.publish("machine/1/request", '{"action":"stop"}')
    backend.publish("machine/1/reply", '{"request_ok":true}')

    assert board1.next_message() == ("machine/1/request", b'{"action":"stop"}')
    assert board1.next_message() == ("machine/1/reply", b'{"request_ok":true}')


def test_the_backend_account_reads_and_writes_its_stats(secure_broker: SecureBroker, clients: list[Client]) -> None:
    backend = connect(secure_broker, clients, *BACKEND)
    backend.subscribe("stats/#")
    backend.publish("stats/bridge", '{"Connected":true}')
    assert backend.next_message() == ("stats/bridge", b'{"Connected":true}')


@pytest.mark.parametrize(
    ("username", "password"),
    [("board-1", "wrong-secret"), ("board-9", "whatever"), ("", "")],
    ids=["wrong password", "unknown board", "anonymous"],
)
def test_a_wrong_or_missing_password_is_refused(
    secure_broker: SecureBroker, clients: list[Client], username: str, password: str
) -> None:
    client = connect(secure_broker, clients, username, password)
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
