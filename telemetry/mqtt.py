"""The MQTT side of the board bridge: the paho client factory and the bridge runtime.

Threads:
- paho's network thread reads and writes the socket; ``on_message`` only parses nothing, counts and enqueues, so the
  socket is never blocked by the database (keep-alives and other boards' traffic keep flowing);
- one worker thread takes messages in arrival order, does the database work (``telemetry.ingest``), publishes the
  reply, then hands the dashboard update to the live thread. Orphan housekeeping runs on the same worker, and so
  does the batched write of the read-only requests' heartbeat stamps (``ingest.flush_heartbeats``, every 0.5 s);
- one live thread broadcasts dashboard tiles and heartbeats (``machines.live``), coalesced per machine, in batches;
- the caller's thread (``mqtt_listen``) publishes stats every 5 s and schedules the housekeeping.

A request that waited longer than ``STALE_SECONDS`` in the queue is past the board's 2 s timeout: its reply would be
taken as the answer to the board's *next* request (no correlation, §2.0), so it gets none. A state change in it is
still recorded (the board replays it, and replays are idempotent); a stale query is skipped.

Stats, published every 5 s on ``stats/<client id>`` (retained, QoS 0; a final one with ``"Connected": false`` on a
clean shutdown). The first five keys are the old backend's::

    {"Connected": true,                 # connected to the broker
     "Backend host": "fabpi",           # hostname of the bridge
     "Backend IP": "192.168.1.10",      # its resolved IP
     "Received": 1234,                  # messages received on <TOPIC>/+ since start
     "Sent": 1100,                      # replies published since start
     "Dropped": 3,                      # malformed messages dropped without a reply (S24)
     "Late": 0,                         # requests not answered because they waited > STALE_SECONDS
     "Errors": 0,                       # replies with request_ok false because the database was unavailable
     "Queue": 0,                        # messages waiting for the worker now
     "Started": "2026-06-20T10:00:00+00:00",  # when this bridge started (ISO 8601)
     "Time": "2026-06-20T10:05:00+00:00",     # when this stats message was built: older than ~15 s = stale
     "Client id": "fabomatic-fabpi-123",
     "Shared": false}                   # MQTT 5 shared subscription in use
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from django.conf import settings
from django.db import close_old_connections, connections
from django.db.backends.signals import connection_created

from . import ingest
from . import protocol as p

logger = logging.getLogger(__name__)

STATS_TOPIC = "stats"
STATS_EVERY = 5.0
HOUSEKEEPING_EVERY = 60.0
SHARE_GROUP = "fabomatic-bridge"
STALE_SECONDS = 1.8
# SQLite: give up on a locked database before the board's 2 s timeout and answer request_ok false instead.
SQLITE_BUSY_MS = 1200
_HOUSEKEEP = object()
_FLUSH = object()


def default_client_id() -> str:
    return settings.MQTT["CLIENT_ID"] or f"fabomatic-{socket.gethostname()}-{os.getpid()}"


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Disable Nagle on our side: both ends must, or each small reply waits ~40 ms for an ACK."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        logger.debug("TCP_NODELAY not set on %r", sock)


def build_client(*, client_id: str | None = None, conf: dict[str, Any] | None = None) -> mqtt.Client:
    """A paho client configured from settings.MQTT (credentials, TLS, MQTT 5 when sharing), not yet connected."""
    conf = conf or settings.MQTT
    v5 = bool(conf.get("SHARED_SUBSCRIPTION"))
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or default_client_id(),
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else True,  # stale requests must not be queued for us: boards replay their own
    )
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    if conf.get("USERNAME"):
        client.username_pw_set(conf["USERNAME"], conf.get("PASSWORD"))
    if conf.get("TLS"):
        client.tls_set(ca_certs=conf.get("TLS_CA") or None)
    client.on_socket_open = _nodelay
    return client


def subscription(conf: dict[str, Any] | None = None) -> str:
    conf = conf or settings.MQTT
    topic = f"{conf['TOPIC']}/+"
    return f"$share/{SHARE_GROUP}/{topic}" if conf.get("SHARED_SUBSCRIPTION") else topic


def reply_topic(machine_id: int, conf: dict[str, Any] | None = None) -> str:
    return f"{(conf or settings.MQTT)['TOPIC']}/{machine_id}/reply"


def request_topic(machine_id: int, conf: dict[str, Any] | None = None) -> str:
    return f"{(conf or settings.MQTT)['TOPIC']}/{machine_id}/request"


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _limit_sqlite_wait(sender: Any, connection: Any, **kwargs: Any) -> None:
    if connection.vendor == "sqlite" and threading.current_thread().name.startswith("bridge-"):
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}")
            # The bridge reads a few index pages per request: a small page cache keeps it under 80 MB RSS.
            cursor.execute("PRAGMA cache_size = -4000")


def _persistent_connection() -> None:
    # Bridge threads keep one connection each; it is dropped and reopened only after an error.
    connections["default"].settings_dict = {**connections["default"].settings_dict, "CONN_MAX_AGE": None}


class LiveBroadcaster:
    """Dashboard broadcasts off the request path, on their own thread, coalesced per machine.

    A tile is rebuilt at most once per ``every`` seconds per machine however many requests changed it, so a busy
    bridge does not spend its time on the dashboard, and a slow or absent Redis never delays a reply.
    """

    def __init__(self, every: float = 0.25) -> None:
        self.every = every
        self._pending: dict[int, ingest.Outcome] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bridge-live", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, machine_id: int, outcome: ingest.Outcome) -> None:
        if not outcome.changed and outcome.seen is None:
            return
        with self._lock:
            previous = self._pending.get(machine_id)
            if previous is not None and previous.changed and not outcome.changed:
                return
            self._pending[machine_id] = outcome
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        _persistent_connection()
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                with self._lock:
                    batch, self._pending = self._pending, {}
                if batch:
                    close_old_connections()
                    ingest.broadcast_batch(batch)
                if self._stopping.is_set():
                    return
                time.sleep(self.every)
        finally:
            connections.close_all()


class Bridge:
    """Boards ⇄ database. ``start()``, then ``tick()`` periodically (stats, housekeeping), then ``stop()``."""

    def __init__(
        self,
        *,
        conf: dict[str, Any] | None = None,
        client_id: str | None = None,
        housekeeping_every: float = HOUSEKEEPING_EVERY,
        stats_every: float = STATS_EVERY,
    ) -> None:
        self.conf = conf or settings.MQTT
        self.client_id = client_id or default_client_id()
        self.housekeeping_every = housekeeping_every
        self.stats_every = stats_every
        self.client = build_client(client_id=self.client_id, conf=self.conf)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.queue: queue.SimpleQueue[tuple[float, str, bytes] | object] = queue.SimpleQueue()
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # set once the broker acknowledged the subscription
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name="bridge-worker", daemon=True)
        self.live = LiveBroadcaster()
        self.stats = {"Received": 0, "Sent": 0, "Dropped": 0, "Late": 0, "Errors": 0}
        self.started = _iso_now()
        self._next_stats = 0.0
        self._next_housekeeping = 0.0
        self.host = socket.gethostname()
        try:
            self.host_ip = socket.gethostbyname(self.host)
        except OSError:
            self.host_ip = ""

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        connection_created.connect(_limit_sqlite_wait, dispatch_uid="bridge-sqlite-busy")
        self._worker.start()
        self.live.start()
        self.client.connect_async(self.conf["HOST"], self.conf["PORT"], keepalive=30)
        self.client.loop_start()

    def tick(self) -> None:
        """Publish stats and schedule the orphan housekeeping when due. Call about once a second."""
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + self.stats_every
            self.publish_stats()
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + self.housekeeping_every
            self.queue.put(_HOUSEKEEP)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the message in hand, then disconnect. Messages still queued are left to the boards' replays."""
        self._stopping.set()
        self.queue.put(None)
        self._worker.join(timeout)
        self.live.stop()
        if self.connected.is_set():
            self.publish_stats(connected=False).wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()
        connection_created.disconnect(dispatch_uid="bridge-sqlite-busy")

    # --- paho callbacks (network thread: never block, never raise) -------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            if reason_code.is_failure:
                logger.error("MQTT connection refused: %s", reason_code)
                return
            client.subscribe(subscription(self.conf), qos=0)  # renewed on every reconnect
            self.connected.set()
            logger.info("connected to %s:%s, subscribed to %s", self.conf["HOST"], self.conf["PORT"], subscription())
        except Exception:
            logger.exception("on_connect failed")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, props: Any) -> None:
        if any(code.is_failure for code in reason_codes):
            logger.error("subscription to %s refused: %s", subscription(self.conf), reason_codes)
        else:
            self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if not self._stopping.is_set():
            logger.warning("MQTT connection lost (%s); reconnecting", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self.stats["Received"] += 1
            self.queue.put((time.monotonic(), message.topic, message.payload))
        except Exception:
            logger.exception("on_message failed")

    # --- worker ----------------------------------------------------------------------------------

    def _work(self) -> None:
        _persistent_connection()
        next_flush = time.monotonic() + ingest.FLUSH_EVERY
        try:
            while not self._stopping.is_set():
                # Heartbeat stamps of read-only requests are written in one batch every FLUSH_EVERY seconds.
                wait = max(0.0, next_flush - time.monotonic()) if ingest.heartbeats_pending() else None
                try:
                    item = self.queue.get(timeout=wait)
                except queue.Empty:
                    item = _FLUSH
                if item is None:
                    break
                try:
                    if item is _HOUSEKEEP:
                        self.housekeep()
                    elif item is not _FLUSH:
                        self.handle(*item)  # type: ignore[misc]
                    if time.monotonic() >= next_flush:
                        next_flush = time.monotonic() + ingest.FLUSH_EVERY
                        ingest.flush_heartbeats()
                except Exception:  # the worker must survive anything
                    logger.exception("bridge worker failed on a message")
        finally:
            try:
                ingest.flush_heartbeats()
            finally:
                connections.close_all()

    def handle(self, received: float, topic: str, payload: bytes) -> None:
        """One message: parse, process, reply, broadcast."""
        try:
            machine_id = p.parse_machine_id(topic, self.conf["TOPIC"])
            request = p.parse_payload(payload)
        except p.Malformed as exc:
            self.stats["Dropped"] += 1
            logger.warning("dropped message on %s: %s", topic[:80], exc)
            return
        late = time.monotonic() - received > STALE_SECONDS
        if late and isinstance(request, p.CheckMachine | p.CheckUser | p.InUse | p.SyncCache):
            self.stats["Late"] += 1
            logger.warning("machine %s %s: skipped, waited too long", machine_id, request.action)
            return
        close_old_connections()
        outcome = ingest.process(machine_id, request)
        if outcome.reply is not None:
            if late:
                self.stats["Late"] += 1
                logger.warning("machine %s %s: recorded, reply withheld (too late)", machine_id, request.action)
            else:
                self.client.publish(reply_topic(machine_id, self.conf), p.encode(outcome.reply), qos=0)
                self.stats["Sent"] += 1
        if outcome.failed:
            self.stats["Errors"] += 1
        self.live.put(machine_id, outcome)

    def housekeep(self) -> None:
        close_old_connections()
        try:
            machine_ids = ingest.close_orphans()
        except Exception:
            logger.exception("orphan housekeeping failed")
            ingest._drop_broken_connection()
            return
        for machine_id in set(machine_ids):
            self.live.put(machine_id, ingest.Outcome(None, changed=True))

    # --- stats -----------------------------------------------------------------------------------

    def stats_payload(self, connected: bool | None = None) -> dict[str, Any]:
        return {
            "Connected": self.connected.is_set() if connected is None else connected,
            "Backend host": self.host,
            "Backend IP": self.host_ip,
            **self.stats,
            "Queue": self.queue.qsize(),
            "Started": self.started,
            "Time": _iso_now(),
            "Client id": self.client_id,
            "Shared": bool(self.conf.get("SHARED_SUBSCRIPTION")),
        }

    def publish_stats(self, connected: bool | None = None) -> mqtt.MQTTMessageInfo:
        payload = json.dumps(self.stats_payload(connected))
        return self.client.publish(f"{STATS_TOPIC}/{self.client_id}", payload, qos=0, retain=True)
