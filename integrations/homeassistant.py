"""Home Assistant MQTT discovery (``HA_DISCOVERY``), published by the bridge on its own MQTT connection.

Each machine is one Home Assistant device with three sensors, announced by retained config topics
``<prefix>/sensor/fabomatic_<id>/<state|user|hours>/config``: its state (an enum: free, in_use, blocked,
maintenance, offline), the first name of whoever is on it, and its hour meter (h, ``total_increasing``). All three
read one retained JSON state topic, ``<prefix>/fabomatic/<id>/state``; they are available while both
``<prefix>/fabomatic/<id>/availability`` (the machine is known) and ``<prefix>/fabomatic/bridge/availability`` (a
bridge is publishing; the bridge's MQTT will sets it ``offline`` if it dies) say ``online``.

The bridge's live thread calls :meth:`HomeAssistant.update` with the tiles it just sent to the dashboards (off the
reply path), and :meth:`HomeAssistant.full` every :data:`FULL_EVERY` seconds: portal changes, boards going offline
(a matter of time, not of a message) and machines deleted since (their configs are emptied, which removes them from
Home Assistant; the configs already on the broker are read back at connection, so a machine deleted while the
bridge was stopped goes too).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings

from machines.dashboard.tiles import Tile, tiles
from machines.models import Machine

logger = logging.getLogger(__name__)

FULL_EVERY = 30.0
SENSORS = ("state", "user", "hours")
STATES = ("free", "in_use", "blocked", "maintenance", "offline")
# The dashboard's two locks, in Home Assistant's five states: an open "out of order" report is maintenance, a
# pending check after use blocks the machine to members (the exact one is the attribute "detail").
FIVE = {"out_of_order": "maintenance", "to_check": "blocked"}
NODE = "fabomatic_"

Publish = Callable[[str, str, bool], Any]


class HomeAssistant:
    def __init__(self, publish: Publish, prefix: str | None = None) -> None:
        self.publish = publish
        self.prefix = prefix or settings.HA_DISCOVERY_PREFIX
        self._lock = threading.Lock()
        self._configured: dict[int, str] = {}  # machine id → the name its configs carry
        self._states: dict[int, str] = {}  # machine id → the state payload last published
        self._on_broker: set[int] = set()  # machines whose config the broker holds (read back at connection)

    # --- topics ---------------------------------------------------------------------------------------------

    def config_topic(self, machine_id: int, sensor: str) -> str:
        return f"{self.prefix}/sensor/{NODE}{machine_id}/{sensor}/config"

    def state_topic(self, machine_id: int) -> str:
        return f"{self.prefix}/fabomatic/{machine_id}/state"

    def availability_topic(self, machine_id: int) -> str:
        return f"{self.prefix}/fabomatic/{machine_id}/availability"

    @property
    def bridge_topic(self) -> str:
        """``online`` while a bridge publishes; ``offline`` when it stops, by itself or by its MQTT will (a crash)."""
        return f"{self.prefix}/fabomatic/bridge/availability"

    @property
    def existing(self) -> str:
        """The filter of the state sensors' configs: what the broker holds of earlier runs."""
        return f"{self.prefix}/sensor/+/state/config"

    def on_existing(self, client: Any, userdata: Any, message: Any) -> None:
        """paho callback (network thread) for :attr:`existing`: remember which machines the broker announces."""
        node = message.topic.split("/")[-3]
        if not node.startswith(NODE) or not node[len(NODE) :].isdigit():
            return
        with self._lock:
            if message.payload:
                self._on_broker.add(int(node[len(NODE) :]))
            else:
                self._on_broker.discard(int(node[len(NODE) :]))

    # --- payloads -------------------------------------------------------------------------------------------

    def configs(self, machine_id: int, name: str) -> dict[str, dict[str, Any]]:
        device = {"identifiers": [f"{NODE}{machine_id}"], "name": name, "manufacturer": "Fab-O-Matic"}
        common = {
            "state_topic": self.state_topic(machine_id),
            "availability": [{"topic": self.availability_topic(machine_id)}, {"topic": self.bridge_topic}],
            "availability_mode": "all",
            "device": device,
            "origin": {"name": "Fab-O-Matic"},
        }
        return {
            "state": {
                **common,
                "name": "State",
                "unique_id": f"{NODE}{machine_id}_state",
                "device_class": "enum",
                "options": list(STATES),
                "value_template": "{{ value_json.state }}",
                "json_attributes_topic": self.state_topic(machine_id),
                "icon": "mdi:state-machine",
            },
            "user": {
                **common,
                "name": "User",
                "unique_id": f"{NODE}{machine_id}_user",
                "value_template": "{{ value_json.user }}",
                "icon": "mdi:account",
            },
            "hours": {
                **common,
                "name": "Hours",
                "unique_id": f"{NODE}{machine_id}_hours",
                "device_class": "duration",
                "unit_of_measurement": "h",
                "state_class": "total_increasing",
                "suggested_display_precision": 1,
                "value_template": "{{ value_json.hours }}",
            },
        }

    @staticmethod
    def state_payload(tile: Tile, hours: float) -> str:
        state = FIVE.get(tile["state"], tile["state"])
        return json.dumps(
            {"state": state, "detail": tile["state"], "user": tile["user"] or "", "hours": round(hours, 3)},
            sort_keys=True,
        )

    # --- publishing -----------------------------------------------------------------------------------------

    def update(self, machine_tiles: Iterable[Tile]) -> int:
        """Announce the machines not yet announced (or renamed) and publish the states that changed."""
        machine_tiles = list(machine_tiles)
        if not machine_tiles:
            return 0
        ids = [tile["id"] for tile in machine_tiles]
        hours = dict(Machine.objects.filter(pk__in=ids).values_list("pk", "hours"))
        published = 0
        with self._lock:
            for tile in machine_tiles:
                machine_id = tile["id"]
                if self._configured.get(machine_id) != tile["name"]:
                    for sensor, config in self.configs(machine_id, tile["name"]).items():
                        self.publish(self.config_topic(machine_id, sensor), json.dumps(config), True)
                    self.publish(self.availability_topic(machine_id), "online", True)
                    self._configured[machine_id] = tile["name"]
                    self._on_broker.add(machine_id)
                    self._states.pop(machine_id, None)
                payload = self.state_payload(tile, hours.get(machine_id, 0.0))
                if self._states.get(machine_id) != payload:
                    self.publish(self.state_topic(machine_id), payload, True)
                    self._states[machine_id] = payload
                    published += 1
        return published

    def full(self) -> None:
        """Every machine's state, and the configs of machines that no longer exist removed."""
        machine_tiles = tiles()
        self.publish(self.bridge_topic, "online", True)
        self.update(machine_tiles)
        present = {tile["id"] for tile in machine_tiles}
        with self._lock:
            gone = (self._on_broker | set(self._configured)) - present
        for machine_id in sorted(gone):
            self.remove(machine_id)

    def remove(self, machine_id: int) -> None:
        """An empty retained config removes the entity from Home Assistant (and the retained copy from the broker)."""
        with self._lock:
            for sensor in SENSORS:
                self.publish(self.config_topic(machine_id, sensor), "", True)
            self.publish(self.state_topic(machine_id), "", True)
            self.publish(self.availability_topic(machine_id), "", True)
            self._configured.pop(machine_id, None)
            self._states.pop(machine_id, None)
            self._on_broker.discard(machine_id)
        logger.info("Home Assistant: machine %s removed", machine_id)

    def reset(self) -> None:
        """After a (re)connection: publish everything again at the next pass (the broker may have lost it)."""
        with self._lock:
            self._configured.clear()
            self._states.clear()

    def offline(self) -> None:
        """The bridge stops: every machine unavailable in Home Assistant until it is back."""
        self.publish(self.bridge_topic, "offline", True)


def attach(client: Any) -> HomeAssistant:
    """The bridge's publisher on its paho ``client`` (QoS 1, retained); the read-back of existing configs goes to
    :meth:`HomeAssistant.on_existing`, never to the boards' message handler."""
    ha = HomeAssistant(lambda topic, payload, retain: client.publish(topic, payload, qos=1, retain=retain))
    client.message_callback_add(ha.existing, ha.on_existing)
    client.will_set(ha.bridge_topic, "offline", qos=1, retain=True)  # before the connection: the broker keeps it
    return ha
