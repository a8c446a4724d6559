"""The MQTT side of the board bridge: the paho client factory and the bridge runtime.

Threads:
- paho's network thread reads and writes the socket; ``on_message`` validates the message (a payload that is not a
  board's is dropped at once, never queued), drops retained deliveries, and queues the request per machine, so the
  socket is never blocked by the database (keep-alives and other boards' traffic keep flowing);
- ``BRIDGE_WORKERS`` worker threads take the machines' queues in turn (:class:`Dispatcher`): one machine's requests in
  arrival order, machines in parallel, so a locked row or a slow write holds up only that machine. A worker does the
  database work (``telemetry.ingest``), publishes the reply, and hands the dashboard update to the live thread;
  orphan housekeeping runs on a worker too;
- the watchdog (:class:`Watchdog`) answers ``request_ok: false`` to every request still undecided
  ``BRIDGE_REPLY_DEADLINE`` seconds after it arrived: the board is never left in silence. A :class:`Job` is answered
  exactly once, by whichever of the two claims it first; a state change finished after the deadline is still
  recorded (the board does not replay an answered request), a query past it is not run;
- one thread writes the read-only requests' heartbeat stamps every 0.5 s (``fastpath.flush_heartbeats``);
- one live thread broadcasts dashboard tiles and heartbeats (``machines.dashboard.events``), coalesced per machine,
  in batches;
- the caller's thread (``mqtt_listen``) publishes stats every 5 s and schedules the housekeeping;
- with ``METRICS_PORT`` set, a small HTTP server serves Prometheus metrics, a thread per scrape (telemetry/metrics.py).

Stats, published every 5 s on ``stats/<client id>`` (retained, QoS 0; a final one with ``"Connected": false`` on a
clean shutdown). The first five keys are the old backend's::

    {"Connected": true,                 # connected to the broker
     "Backend host": "fabpi",           # hostname of the bridge
     "Backend IP": "192.168.1.10",      # its resolved IP
     "Received": 1234,                  # messages received on <TOPIC>/+ since start
     "Sent": 1100,                      # replies published since start
     "Dropped": 3,                      # malformed messages dropped without a reply (S24)
     "Retained": 0,                     # retained deliveries ignored (boards never publish retained)
     "Late": 0,                         # requests answered request_ok false by the watchdog at the deadline
     "Errors": 0,                       # replies with request_ok false because the database was unavailable
     "Copies": 0,                       # replayed or duplicated stopuse recognised as a copy (nothing recorded)
     "Flagged": 0,                      # implausible durations recorded on a flagged use (not counted)
     "Queue": 0,                        # requests waiting for a worker now
     "Workers": 4,                      # worker threads alive
     "Started": "2026-06-20T10:00:00+00:00",  # when this bridge started (ISO 8601)
     "Time": "2026-06-20T10:05:00+00:00",     # when this stats message was built: older than ~15 s = stale
     "Client id": "fabomatic-fabpi-123",
     "Shared": false,                   # MQTT 5 shared subscription in use
     "Latency": {"12": [3.1, 9.8, 32]}}  # per machine's board: median and max ms from receipt to reply, over
                                        # its last LATENCY_WINDOW replies (the System page shows them)
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from django.conf import settings
from django.db import close_old_connections, connections
from django.db.backends.signals import connection_created

from integrations import homeassistant
from integrations.homeassistant import FULL_EVERY, HomeAssistant
from machines.dashboard import events

from . import fastpath, ingest, sessions
from . import protocol as p
from .outcome import Outcome

if TYPE_CHECKING:
    from .metrics import ReplyMetrics

logger = logging.getLogger(__name__)

STATS_TOPIC = "stats"
STATS_EVERY = 5.0
LATENCY_WINDOW = 32  # replies per board kept for its latency figures
HOUSEKEEPING_EVERY = 60.0
SHARE_GROUP = "fabomatic-bridge"
# SQLite: give up on a locked database before the board's 2 s timeout and answer request_ok false instead.
SQLITE_BUSY_MS = 1200
LATE_WRITE_WAIT_MS = 100
# PostgreSQL, per bridge connection: a row lock or a statement that takes longer fails (request_ok false) instead of
# holding a worker; a server that accepts TCP but never answers fails the connection after CONNECT_TIMEOUT_S.
PG_LOCK_TIMEOUT_MS = 1000
PG_STAMP_LOCK_TIMEOUT_MS = 100
PG_STATEMENT_TIMEOUT_MS = 1500
PG_IDLE_IN_TRANSACTION_MS = 10_000
CONNECT_TIMEOUT_S = 2  # libpq's minimum
# A job holding a worker this long while others wait calls the spare workers in.
OVERLOAD_SECONDS = 0.2
# Queries: a query past its deadline was answered "cannot decide" by the watchdog and is not run late.
READ_ONLY = (p.CheckMachine, p.CheckUser, p.InUse, p.SyncCache)
_HOUSEKEEP = object()
_STOP = object()


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


def _limit_database_waits(sender: Any, connection: Any, **kwargs: Any) -> None:
    """Bridge connections never wait longer than a board does (the watchdog answers at the deadline anyway)."""
    if not threading.current_thread().name.startswith("bridge-"):
        return
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}")
            _waits.ms = SQLITE_BUSY_MS
            # The bridge reads a few index pages per request: a small page cache keeps it under 80 MB RSS.
            cursor.execute("PRAGMA cache_size = -4000")
        elif connection.vendor == "postgresql":
            # The stamps thread gives up on a locked row at once: the stamp waits for its next flush.
            lock_ms = (
                PG_STAMP_LOCK_TIMEOUT_MS if threading.current_thread().name == "bridge-stamps" else PG_LOCK_TIMEOUT_MS
            )
            cursor.execute(
                f"SET lock_timeout = {lock_ms}; SET statement_timeout = {PG_STATEMENT_TIMEOUT_MS};"
                f" SET idle_in_transaction_session_timeout = {PG_IDLE_IN_TRANSACTION_MS}"
            )


_waits = threading.local()


def _sqlite_wait_until(deadline: float) -> None:
    """On SQLite, a request waits for the write lock only until its deadline (at least LATE_WRITE_WAIT_MS when it
    is already past it: the watchdog answered, one short try is made to record it). A worker is never held by a
    write nobody waits for, so the queries behind it are still answered from the database."""
    if connections["default"].vendor != "sqlite":
        return
    wait_ms = max(LATE_WRITE_WAIT_MS, min(SQLITE_BUSY_MS, int((deadline - time.monotonic()) * 1000)))
    wait_ms -= wait_ms % 50  # fewer PRAGMA calls: the wait changes in 50 ms steps
    if getattr(_waits, "ms", None) != wait_ms:
        with connections["default"].cursor() as cursor:
            cursor.execute(f"PRAGMA busy_timeout = {wait_ms}")
        _waits.ms = wait_ms


def _persistent_connection() -> None:
    """Bridge threads keep one connection each, dropped and reopened only after an error (``ingest.process`` drops
    it), so no health-check query precedes each request (it was a quarter of the bridge's round trips). On
    PostgreSQL the connection gives up on a silent server (connect timeout, TCP keepalives) instead of blocking its
    thread, and binds parameters server-side with prepared statements: the same few queries run thousands of times,
    and PostgreSQL's CPU per request fell from 55 % to 32 % of a core in the benchmark. (Not for PgBouncer in
    transaction pooling mode, which cannot keep prepared statements.)"""
    wrapper = connections["default"]
    settings_dict = {**wrapper.settings_dict, "CONN_MAX_AGE": None, "CONN_HEALTH_CHECKS": False}
    if wrapper.vendor == "postgresql":
        settings_dict["OPTIONS"] = {
            **settings_dict.get("OPTIONS", {}),
            "server_side_binding": True,
            "prepare_threshold": 5,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 2,
        }
    wrapper.settings_dict = settings_dict


class LiveBroadcaster:
    """Dashboard broadcasts off the request path, on their own thread, coalesced per machine.

    A tile is rebuilt at most once per ``every`` seconds per machine however many requests changed it, so a busy
    bridge does not spend its time on the dashboard, and a slow or absent Redis never delays a reply.
    """

    def __init__(self, every: float = 0.25) -> None:
        self.every = every
        self._pending: dict[int, Outcome] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bridge-live", daemon=True)
        self.throttle = events.HeartbeatThrottle()
        self.ha: HomeAssistant | None = None  # HA_DISCOVERY: states published from this thread too
        self._next_full = 0.0

    def start(self) -> None:
        self._thread.start()

    def put(self, machine_id: int, outcome: Outcome) -> None:
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

    def _push(self, batch: dict[int, Outcome]) -> None:
        """The changed tiles (three queries for the batch) and the heartbeats that are due, in one send."""
        changed = [machine_id for machine_id, outcome in batch.items() if outcome.changed]
        for machine_id in changed:
            self.throttle.sent_tile(machine_id)
        heard = [
            events.heartbeat(machine_id, outcome.seen)
            for machine_id, outcome in batch.items()
            if not outcome.changed and outcome.seen is not None and self.throttle.due(machine_id)
        ]
        sent = events.push_machines(changed, heard=heard)
        if self.ha is not None and sent:
            self.ha.update(sent)

    def publish_all_again(self) -> None:
        """After a (re)connection: Home Assistant's configs and states again, at once (the broker may lose them)."""
        if self.ha is not None:
            self.ha.reset()
            self._next_full = 0.0
            self._wake.set()

    def _home_assistant(self) -> None:
        """Every machine to Home Assistant every ``FULL_EVERY`` seconds (offline boards, portal edits, deletions)."""
        if self.ha is None or time.monotonic() < self._next_full:
            return
        self._next_full = time.monotonic() + FULL_EVERY
        try:
            close_old_connections()
            self.ha.full()
        except Exception:
            logger.warning("Home Assistant update failed", exc_info=True)

    def _run(self) -> None:
        _persistent_connection()
        try:
            while True:
                self._wake.wait(None if self.ha is None else max(0.0, self._next_full - time.monotonic()))
                self._wake.clear()
                with self._lock:
                    batch, self._pending = self._pending, {}
                if batch:
                    close_old_connections()
                    self._push(batch)
                self._home_assistant()
                if self._stopping.is_set():
                    return
                time.sleep(self.every)
        finally:
            connections.close_all()


class Job:
    """One board request on its way through the bridge. Exactly one reply is ever published for it: by the worker
    that processed it, or by the watchdog when its deadline passed first (``request_ok: false``)."""

    __slots__ = ("received", "machine_id", "request", "deadline", "_token")

    def __init__(self, received: float, machine_id: int, request: p.Request, deadline: float) -> None:
        self.received = received
        self.machine_id = machine_id
        self.request = request
        self.deadline = deadline
        self._token = [True]  # claimed by popping it: list.pop is atomic, no lock per request

    @property
    def expects_reply(self) -> bool:
        return not isinstance(self.request, p.Alive)

    @property
    def claimed(self) -> bool:
        return not self._token

    def claim(self) -> bool:
        """Take the right to answer: True once, for the first caller."""
        try:
            self._token.pop()
        except IndexError:
            return False
        return True


class Dispatcher:
    """Jobs to workers, in arrival order per machine, one job of a machine at a time, machines in parallel.

    A machine whose database row is locked, or whose write is slow, holds up only its own later requests; every
    other machine's go to the other workers.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[object, deque[object]] = {}
        self._ready: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._size = 0

    def put(self, key: object, item: object) -> None:
        with self._lock:
            waiting = self._queues.get(key)
            self._size += 1
            if waiting is None:  # the machine is neither queued nor being processed: schedule it
                self._queues[key] = deque([item])
                self._ready.put(key)
            else:
                waiting.append(item)

    def get(self, timeout: float | None = None) -> tuple[object, object]:
        """The next job of a machine no other worker holds. Raises queue.Empty on timeout."""
        key = self._ready.get(timeout=timeout)
        if key is _STOP:
            return _STOP, None
        with self._lock:
            return key, self._queues[key][0]

    def done(self, key: object) -> None:
        """The job taken for ``key`` is finished: its machine's next job, if any, is scheduled."""
        with self._lock:
            waiting = self._queues[key]
            waiting.popleft()
            self._size -= 1
            if waiting:
                self._ready.put(key)
            else:
                del self._queues[key]

    def stop(self, workers: int) -> None:
        for _ in range(workers):
            self._ready.put(_STOP)

    def qsize(self) -> int:
        return self._size


class Watchdog:
    """Answers ``request_ok: false`` for every request still unanswered at its deadline: the board is never left
    without a reply (silence makes it disconnect and show "unresponsive"), whatever the database is doing.

    Every job gets the same delay, so deadlines come in arrival order: a deque, checked every ``TICK`` seconds
    (one wake-up per tick, not per request; a reply is due by the deadline + TICK, still inside the board's 2 s).
    """

    TICK = 0.05

    def __init__(self, answer: Callable[[Job], None], on_tick: Callable[[], None] | None = None) -> None:
        self._answer = answer
        self._on_tick = on_tick
        self._jobs: deque[Job] = deque()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bridge-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def watch(self, job: Job) -> None:
        self._jobs.append(job)  # deque.append is atomic: no lock on paho's thread

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(2)

    def _run(self) -> None:
        while not self._stopping.wait(self.TICK):
            if self._on_tick is not None:
                try:
                    self._on_tick()
                except Exception:
                    logger.exception("watchdog tick failed")
            now = time.monotonic()
            while self._jobs and self._jobs[0].deadline <= now:
                job = self._jobs.popleft()
                if job.claimed:
                    continue
                try:
                    self._answer(job)
                except Exception:
                    logger.exception("watchdog failed to answer machine %s", job.machine_id)


class Bridge:
    """Boards ⇄ database. ``start()``, then ``tick()`` periodically (stats, housekeeping), then ``stop()``."""

    def __init__(
        self,
        *,
        conf: dict[str, Any] | None = None,
        client_id: str | None = None,
        housekeeping_every: float = HOUSEKEEPING_EVERY,
        stats_every: float = STATS_EVERY,
        workers: int | None = None,
        deadline: float | None = None,
    ) -> None:
        self.conf = conf or settings.MQTT
        self.client_id = client_id or default_client_id()
        self.housekeeping_every = housekeeping_every
        self.stats_every = stats_every
        self.workers = workers or settings.BRIDGE_WORKERS
        self.deadline = deadline or settings.BRIDGE_REPLY_DEADLINE
        self.client = build_client(client_id=self.client_id, conf=self.conf)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.dispatcher = Dispatcher()
        self.watchdog = Watchdog(self._answer_late, on_tick=self._check_overload)
        self._overloaded = threading.Event()
        self._spares = [
            threading.Thread(target=self._spare, name=f"bridge-spare-{n + 1}", daemon=True)
            for n in range(max(2, self.workers))
        ]
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # set once the broker acknowledged the subscription
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._busy: dict[str, float] = {}  # worker name → since when it holds a job
        self._busy_lock = threading.Lock()
        self._stamper = threading.Thread(target=self._stamp, name="bridge-stamps", daemon=True)
        self.live = LiveBroadcaster()
        if settings.HA_DISCOVERY:
            self.live.ha = homeassistant.attach(self.client)
        self.stats = {
            "Received": 0,
            "Sent": 0,
            "Dropped": 0,
            "Retained": 0,
            "Late": 0,
            "Errors": 0,
            "Copies": 0,
            "Flagged": 0,
        }
        self._stats_lock = threading.Lock()
        self._latency: dict[int, deque[float]] = {}  # machine id → its last reply latencies (s); under _stats_lock
        self.reply_metrics: ReplyMetrics | None = None  # set by telemetry.metrics.bridge_registry (METRICS_PORT)
        self._drop_log = _RateLimit(per_second=5)
        self.started = _iso_now()
        self._next_stats = 0.0
        self._next_housekeeping = 0.0
        self.host = socket.gethostname()
        try:
            self.host_ip = socket.gethostbyname(self.host)
        except OSError:
            self.host_ip = ""

    def count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    def sent(self, job: Job, ok: bool = True) -> None:
        """Count a reply and keep its latency (an append under the lock the counter takes anyway); ``ok``: its
        request_ok, for the Prometheus metrics when they are on."""
        took = time.monotonic() - job.received
        with self._stats_lock:
            self.stats["Sent"] += 1
            window = self._latency.get(job.machine_id)
            if window is None:
                window = self._latency[job.machine_id] = deque(maxlen=LATENCY_WINDOW)
            window.append(took)
        if self.reply_metrics is not None:
            self.reply_metrics.observe(job.request.action, took, ok)

    def counters(self) -> dict[str, int]:
        """A consistent copy of the stats counters (Received, Sent, Dropped...)."""
        with self._stats_lock:
            return dict(self.stats)

    def workers_alive(self) -> int:
        return sum(1 for t in self._threads if t.is_alive())

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        connection_created.connect(_limit_database_waits, dispatch_uid="bridge-db-waits")
        for _ in range(self.workers):
            self._add_worker()
        for spare in self._spares:
            spare.start()
        self.watchdog.start()
        self._stamper.start()
        self.live.start()
        self.client.connect_async(self.conf["HOST"], self.conf["PORT"], keepalive=30)
        self.client.loop_start()

    def _add_worker(self) -> None:
        thread = threading.Thread(target=self._work, name=f"bridge-worker-{len(self._threads) + 1}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def tick(self) -> None:
        """Publish stats and schedule the orphan housekeeping when due. Call about once a second."""
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + self.stats_every
            self.publish_stats()
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + self.housekeeping_every
            self.dispatcher.put(_HOUSEKEEP, _HOUSEKEEP)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the messages in hand, then disconnect. Messages still queued are left to the boards' replays."""
        self._stopping.set()
        self.dispatcher.stop(len(self._threads) + len(self._spares))
        end = time.monotonic() + timeout
        for thread in [*self._threads, *self._spares]:
            thread.join(max(0.1, end - time.monotonic()))
        self.watchdog.stop()
        self._stamper.join(max(0.1, end - time.monotonic()))
        self.live.stop()
        if self.live.ha is not None and self.connected.is_set():
            self.live.ha.offline()
        if self.connected.is_set():
            self.publish_stats(connected=False).wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()
        connection_created.disconnect(dispatch_uid="bridge-db-waits")

    # --- paho callbacks (network thread: never block, never raise) -------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            if reason_code.is_failure:
                logger.error("MQTT connection refused: %s", reason_code)
                return
            client.subscribe(subscription(self.conf), qos=0)  # renewed on every reconnect
            if self.live.ha is not None:  # the configs of earlier runs, then everything published again
                client.subscribe(self.live.ha.existing, qos=0)
                self.live.publish_all_again()
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
        """Validate and queue; nothing here touches the database. A payload that is not a board's is not kept."""
        try:
            received = time.monotonic()
            self.count("Received")
            if message.retain:
                # Boards never publish retained messages: this one is a stored copy the broker hands us again at
                # every (re)subscription (protocol doc, "Retained messages"). Processing it would replay it forever.
                self.count("Retained")
                if self._drop_log.allow():
                    logger.warning("ignored a retained message on %s", message.topic[:80])
                return
            try:
                machine_id = p.parse_machine_id(message.topic, self.conf["TOPIC"])
                request = p.parse_payload(message.payload)
            except p.Malformed as exc:
                self.count("Dropped")
                if self._drop_log.allow():
                    logger.warning("dropped message on %s: %s", message.topic[:80], exc)
                return
            job = Job(received, machine_id, request, received + self.deadline)
            if job.expects_reply:
                self.watchdog.watch(job)
            self.dispatcher.put(machine_id, job)
        except Exception:
            logger.exception("on_message failed")

    # --- workers ---------------------------------------------------------------------------------

    def _work(self) -> None:
        _persistent_connection()
        name = threading.current_thread().name
        try:
            while True:
                key, item = self.dispatcher.get()
                if key is _STOP:
                    return
                self._run_job(name, key, item)
        finally:
            connections.close_all()

    def _spare(self) -> None:
        """A spare worker: takes jobs only while a worker has been held by one job for OVERLOAD_SECONDS and others
        wait. One busy worker is the fastest way through SQLite (threads share the GIL); the spares keep one slow
        machine from holding up the others' replies."""
        _persistent_connection()
        name = threading.current_thread().name
        try:
            while not self._stopping.is_set():
                if not self._overloaded.wait(0.5):
                    continue
                try:
                    key, item = self.dispatcher.get(timeout=0.1)
                except queue.Empty:
                    continue
                if key is _STOP:
                    return
                self._run_job(name, key, item)
        finally:
            connections.close_all()

    def _run_job(self, name: str, key: object, item: object) -> None:
        with self._busy_lock:
            self._busy[name] = time.monotonic()
        try:
            if item is _HOUSEKEEP:
                self.housekeep()
            else:
                self.handle(item)  # type: ignore[arg-type]
        except Exception:  # a worker must survive anything
            logger.exception("bridge worker failed on a message")
        finally:
            with self._busy_lock:
                self._busy.pop(name, None)
            self.dispatcher.done(key)

    def _check_overload(self) -> None:
        """On the watchdog's tick: call the spares in while a job holds a worker and other jobs wait."""
        now = time.monotonic()
        with self._busy_lock:
            busy = len(self._busy)
            held = any(now - since > OVERLOAD_SECONDS for since in self._busy.values())
        if held and self.dispatcher.qsize() > busy:
            self._overloaded.set()
        elif not held:
            self._overloaded.clear()

    def _stamp(self) -> None:
        """The fast path's heartbeat stamps, written every FLUSH_EVERY s on their own thread: a locked database
        delays them, never a reply."""
        _persistent_connection()
        try:
            while not self._stopping.wait(fastpath.FLUSH_EVERY):
                if fastpath.heartbeats_pending():
                    close_old_connections()
                    fastpath.flush_heartbeats()
        finally:
            try:
                fastpath.flush_heartbeats()
            finally:
                connections.close_all()

    def handle(self, job: Job) -> None:
        """One request: process, reply (unless the watchdog already did), broadcast."""
        request = job.request
        if job.claimed and isinstance(request, READ_ONLY):
            return  # answered "cannot decide" at the deadline; a query changes nothing, so it is not run late
        _sqlite_wait_until(job.deadline)
        outcome = ingest.process(job.machine_id, request)
        if outcome.reply is not None:
            if job.claim():
                ok = outcome.reply.get("request_ok") is not False
                self.sent(job, ok)  # counted first: a board that has its reply finds it counted
                self.client.publish(reply_topic(job.machine_id, self.conf), p.encode(outcome.reply), qos=0)
            elif outcome.failed:
                logger.warning("machine %s %s: not recorded, database unavailable", job.machine_id, request.action)
            else:
                logger.warning("machine %s %s: recorded after its deadline", job.machine_id, request.action)
        if outcome.failed:
            self.count("Errors")
        if outcome.note == "copy":
            self.count("Copies")
        elif outcome.note == "flagged":
            self.count("Flagged")
        self.live.put(job.machine_id, outcome)

    def _answer_late(self, job: Job) -> None:
        """The watchdog's answer: the backend could not decide in time (the board falls back to its cache)."""
        if not job.claim():
            return
        self.count("Late")
        self.sent(job, ok=False)
        self.client.publish(reply_topic(job.machine_id, self.conf), p.encode(p.unavailable_reply(job.request)), qos=0)
        logger.warning(
            "machine %s %s: no decision within %.1f s, answered request_ok false",
            job.machine_id,
            job.request.action,
            self.deadline,
        )

    def housekeep(self) -> None:
        close_old_connections()
        try:
            machine_ids = sessions.close_orphans()
        except Exception:
            logger.exception("orphan housekeeping failed")
            fastpath.drop_broken_connection()
            return
        for machine_id in set(machine_ids):
            self.live.put(machine_id, Outcome(None, changed=True))

    # --- stats -----------------------------------------------------------------------------------

    def stats_payload(self, connected: bool | None = None) -> dict[str, Any]:
        with self._stats_lock:
            counters = dict(self.stats)
            windows = {machine: sorted(w) for machine, w in self._latency.items()}
        latency = {
            str(machine): [round(w[len(w) // 2] * 1000, 1), round(w[-1] * 1000, 1), len(w)]
            for machine, w in windows.items()
        }
        return {
            "Connected": self.connected.is_set() if connected is None else connected,
            "Backend host": self.host,
            "Backend IP": self.host_ip,
            **counters,
            "Queue": self.dispatcher.qsize(),
            "Workers": self.workers_alive(),
            "Started": self.started,
            "Time": _iso_now(),
            "Client id": self.client_id,
            "Shared": bool(self.conf.get("SHARED_SUBSCRIPTION")),
            "Latency": latency,
        }

    def publish_stats(self, connected: bool | None = None) -> mqtt.MQTTMessageInfo:
        payload = json.dumps(self.stats_payload(connected))
        return self.client.publish(f"{STATS_TOPIC}/{self.client_id}", payload, qos=0, retain=True)


class _RateLimit:
    """At most ``per_second`` log lines a second for a flood of the same kind of event (the count is kept)."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._window = 0
        self._n = 0

    def allow(self) -> bool:
        now = int(time.monotonic())
        if now != self._window:
            self._window, self._n = now, 0
        self._n += 1
        return self._n <= self.per_second
