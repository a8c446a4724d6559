"""Home Assistant MQTT discovery end to end: the real bridge on a real Mosquitto publishes retained configs and states,
read back here by a plain MQTT client, as Home Assistant would read them."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from pytest_django import Settings

from integrations.homeassistant import STATES, HomeAssistant
from machines.models import Machine
from telemetry.mqtt import Bridge

from .boards import SimBoard, time_passes
from .conftest import Lab
from .services import Broker
from .test_bridge_robustness import spawn_bridge

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.broker]

N = "aabbccd3"
# What Home Assistant's MQTT sensor needs to create an entity grouped under a device (its discovery schema): a state
# topic, a unique id (without one there is no device), the device's identifiers, and the availability it reads.
REQUIRED = {"state_topic", "unique_id", "device", "availability", "name", "value_template"}


class Reader:
    """A Home Assistant stand-in: every message under the prefix, the retained ones first."""

    def __init__(self, port: int, prefix: str) -> None:
        self.topics: dict[str, bytes] = {}
        self.changed = threading.Condition()
        self.subscribed: queue.Queue[int] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ha-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.put(mid)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"{prefix}/#", qos=1)
        self.subscribed.get(timeout=10)

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.topics[message.topic] = message.payload
            self.changed.notify_all()

    def wait_for(self, topic: str, check: Any = lambda payload: bool(payload), timeout: float = 10) -> bytes:
        end = time.monotonic() + timeout
        with self.changed:
            while not (topic in self.topics and check(self.topics[topic])):
                left = end - time.monotonic()
                assert left > 0, f"{topic}: {self.topics.get(topic)!r}"
                self.changed.wait(left)
            return self.topics[topic]

    def state(self, topic: str, **expected: Any) -> dict[str, Any]:
        def matches(payload: bytes) -> bool:
            return bool(payload) and all(json.loads(payload).get(k) == v for k, v in expected.items())

        return json.loads(self.wait_for(topic, matches))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def config_topic(prefix: str, machine_id: int, sensor: str) -> str:
    return f"{prefix}/sensor/fabomatic_{machine_id}/{sensor}/config"


@pytest.fixture
def prefix(settings: Settings) -> str:
    settings.HA_DISCOVERY = True
    settings.HA_DISCOVERY_PREFIX = f"ha{uuid.uuid4().hex[:8]}"  # the session's broker keeps retained messages
    return settings.HA_DISCOVERY_PREFIX


@pytest.fixture
def reader(prefix: str, broker: Broker) -> Iterator[Reader]:
    r = Reader(broker.port, prefix)
    yield r
    r.close()


def test_each_machine_is_a_device_with_three_sensors_and_live_states(
    prefix: str, lab: Lab, bridge: Bridge, m1: SimBoard, reader: Reader
) -> None:
    for machine_id, name in ((1, "LASER 1"), (2, "PRINTER 1")):
        configs = {
            s: json.loads(reader.wait_for(config_topic(prefix, machine_id, s))) for s in ("state", "user", "hours")
        }
        for sensor, config in configs.items():
            assert REQUIRED <= set(config), sensor
            assert config["state_topic"] == f"{prefix}/fabomatic/{machine_id}/state"
            device = {"identifiers": [f"fabomatic_{machine_id}"], "name": name, "manufacturer": "Fab-O-Matic"}
            assert config["device"] == device
            assert config["availability"] == [
                {"topic": f"{prefix}/fabomatic/{machine_id}/availability"},
                {"topic": f"{prefix}/fabomatic/bridge/availability"},
            ]
            assert config["availability_mode"] == "all"
        assert len({c["unique_id"] for c in configs.values()}) == 3
        assert configs["state"]["device_class"] == "enum" and configs["state"]["options"] == list(STATES)
        assert STATES == ("free", "in_use", "blocked", "maintenance", "offline")
        assert (configs["hours"]["unit_of_measurement"], configs["hours"]["state_class"]) == ("h", "total_increasing")
        assert reader.wait_for(f"{prefix}/fabomatic/{machine_id}/availability") == b"online"
    assert reader.wait_for(f"{prefix}/fabomatic/bridge/availability") == b"online"
    state = f"{prefix}/fabomatic/1/state"
    assert reader.state(state)["state"] == "offline"  # no board heard yet
    m1.ask({"action": "checkmachine"})
    assert reader.state(state, state="free") == {"state": "free", "detail": "free", "user": "", "hours": 0.0}
    assert m1.ask({"action": "startuse", "uid": N})["request_ok"] is True
    assert reader.state(state, state="in_use")["user"] == "Nina"
    time_passes(1800)
    assert m1.ask({"action": "stopuse", "uid": N, "duration": 1800})["request_ok"] is True
    assert reader.state(state, state="free") == {"state": "free", "detail": "free", "user": "", "hours": 0.5}
    assert reader.state(f"{prefix}/fabomatic/2/state")["state"] == "offline"


def test_a_deleted_machine_leaves_home_assistant(prefix: str, lab: Lab, bridge: Bridge, reader: Reader) -> None:
    config = f"{prefix}/sensor/fabomatic_2/state/config"
    reader.wait_for(config)
    Machine.objects.filter(pk=2).delete()
    bridge.live.publish_all_again()  # what the next periodic pass does
    for sensor in ("state", "user", "hours"):
        reader.wait_for(f"{prefix}/sensor/fabomatic_2/{sensor}/config", lambda payload: payload == b"")
    assert json.loads(reader.wait_for(f"{prefix}/sensor/fabomatic_1/state/config"))["device"]["name"] == "LASER 1"


def test_a_machine_deleted_while_the_bridge_was_stopped_goes_too(prefix: str, lab: Lab, broker: Broker) -> None:
    published: list[tuple[str, str, bool]] = []
    ha = HomeAssistant(lambda topic, payload, retain: published.append((topic, payload, retain)), prefix)
    message = mqtt.MQTTMessage(topic=f"{prefix}/sensor/fabomatic_7/state/config".encode())
    message.payload = b'{"name": "State"}'
    ha.on_existing(None, None, message)  # the broker's retained config of an earlier run
    ha.full()
    assert (f"{prefix}/sensor/fabomatic_7/state/config", "", True) in published
    assert {t for t, p, r in published if p == ""} == {
        f"{prefix}/sensor/fabomatic_7/{s}/config" for s in ("state", "user", "hours")
    } | {f"{prefix}/fabomatic/7/state", f"{prefix}/fabomatic/7/availability"}
    assert all(retain for _, _, retain in published)


def test_a_bridge_that_dies_makes_every_machine_unavailable(
    prefix: str, lab: Lab, broker: Broker, reader: Reader
) -> None:
    """The bridge's MQTT will: killed (no clean stop), the broker itself says the bridge is offline."""
    bridge = spawn_bridge(broker, "ha", HA_DISCOVERY="1", HA_DISCOVERY_PREFIX=prefix)
    try:
        reader.wait_for(f"{prefix}/fabomatic/bridge/availability", lambda payload: payload == b"online", timeout=20)
        reader.wait_for(config_topic(prefix, 1, "state"))
        bridge.kill()
        bridge.wait(10)
        reader.wait_for(f"{prefix}/fabomatic/bridge/availability", lambda payload: payload == b"offline", timeout=60)
    finally:
        if bridge.poll() is None:
            bridge.kill()
            bridge.wait(10)
