"""Prometheus metrics (prometheus-client): the bridge's replies and counters, the fleet's gauges, who may read them.

The bridge (``manage.py mqtt_listen`` with ``METRICS_PORT`` set) serves its registry on its own small HTTP server
(:func:`serve`): a daemon thread per scrape, never the MQTT loop's or a worker's. The portal serves ``/metrics``
(fabomatic/metrics.py) with its request metrics and the same fleet gauges.

- Reply metrics (:class:`ReplyMetrics`) are observed where the bridge counts a reply (``Bridge.sent``): latency from
  receipt to publish per action, replies within and over the board's 2 s, ``request_ok: false`` answers.
- The bridge's own counters (§8.22 of docs/protocol.md: Received, Sent, Dropped, Late, Errors...) are not counted
  a second time: :class:`BridgeCollector` reads them from ``Bridge.counters()`` at scrape time.
- Fleet gauges that need the database (boards online, open uses, lowest free heap, maintenance overdue) are read at
  scrape time by :class:`FleetCollector`, at most once per ``ttl`` seconds, never on a board's request path.

Who may read them (:func:`allowed`): a client on this machine that came straight in (a loopback peer address and
no proxy's forwarding header: behind deploy/caddy every request comes from 127.0.0.1, so a forwarded one is never
local, whatever X-Forwarded-For says), or anyone presenting ``Authorization: Bearer <METRICS_TOKEN>``.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from django.conf import settings
from django.db import connections
from django.db.models import Count, F
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .mqtt import Bridge

logger = logging.getLogger(__name__)

# The board waits 2 s from its own publish for a reply (docs/protocol.md §3.2): the share of replies within it is
# the bridge's service level.
BOARD_TIMEOUT = 2.0
# Around the deadline: the watchdog answers at BRIDGE_REPLY_DEADLINE (1.5 s by default), the board gives up at 2 s.
REPLY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 5.0)
FLEET_TTL = 10.0  # seconds a fleet reading is reused: several scrapers, or a fast one, cost one set of queries
# Headers a reverse proxy adds: their presence means the peer address is the proxy's, not the client's.
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip")

# No "_created" twin of every counter and histogram: noise in every scrape, and nothing here uses it.
disable_created_metrics()


# --- access -------------------------------------------------------------------------------------------------------


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def bearer_matches(authorization: str, token: str) -> bool:
    """``Authorization: Bearer <token>`` with the configured token, compared in constant time. No token: never."""
    scheme, _, supplied = authorization.strip().partition(" ")
    if not token or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(supplied.strip().encode("utf-8", "replace"), token.encode("utf-8"))


def allowed(remote_addr: str, headers: Mapping[str, str], token: str) -> bool:
    """May this request read the metrics? ``headers`` has lower-case names."""
    if bearer_matches(headers.get("authorization", ""), token):
        return True
    return is_loopback(remote_addr) and not any(name in headers for name in FORWARDING_HEADERS)


# --- the bridge ---------------------------------------------------------------------------------------------------


class ReplyMetrics:
    """Observed once per reply the bridge publishes (worker's or watchdog's), beside its "Sent" count."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "fabomatic_bridge_reply_seconds",
            "Seconds from a board request's receipt to its reply's publication, per action.",
            ["action"],
            buckets=REPLY_BUCKETS,
            registry=registry,
        )
        self.replies = Counter(
            "fabomatic_bridge_replies",
            f"Replies published, per action, within the board's {BOARD_TIMEOUT:g} s or not (within_2s).",
            ["action", "within_2s"],
            registry=registry,
        )
        self.not_ok = Counter(
            "fabomatic_bridge_replies_not_ok",
            "Replies that said request_ok false (refused, database unavailable, or no decision by the deadline).",
            ["action"],
            registry=registry,
        )

        # action → its children (latency, within, over, not ok): labels() takes a lock and builds a key per call.
        self._children: dict[str, tuple[Any, Any, Any, Any]] = {}

    def observe(self, action: str, seconds: float, ok: bool) -> None:
        children = self._children.get(action)
        if children is None:  # the first reply to this action (a dict store is atomic: a race only repeats it)
            children = self._children[action] = (
                self.latency.labels(action),
                self.replies.labels(action, "true"),
                self.replies.labels(action, "false"),
                self.not_ok.labels(action),
            )
        latency, within, over, not_ok = children
        latency.observe(seconds)
        (within if seconds <= BOARD_TIMEOUT else over).inc()
        if not ok:
            not_ok.inc()


# Bridge.counters() key → (metric name without _total, help).
BRIDGE_COUNTERS = {
    "Received": ("fabomatic_bridge_messages_received", "Messages received on <MQTT_TOPIC>/+."),
    "Sent": ("fabomatic_bridge_replies_sent", "Replies published."),
    "Dropped": ("fabomatic_bridge_dropped", "Malformed messages dropped without a reply."),
    "Retained": ("fabomatic_bridge_retained", "Retained deliveries ignored."),
    "Late": ("fabomatic_bridge_late", "Requests answered request_ok false by the watchdog at the deadline."),
    "Errors": ("fabomatic_bridge_errors", "Requests answered request_ok false: database unavailable."),
    "Copies": ("fabomatic_bridge_copies", "Replayed or duplicated stopuse recognised as a copy."),
    "Flagged": ("fabomatic_bridge_flagged", "Implausible durations recorded on a flagged use."),
}


class BridgeCollector(Collector):
    """The bridge's own stats (the ``stats/<client id>`` message's counters), read at scrape time."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.started = time.time()

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        counters = self.bridge.counters()
        for key, (name, help_text) in BRIDGE_COUNTERS.items():
            yield CounterMetricFamily(name, help_text, value=counters[key])
        yield _gauge("fabomatic_bridge_queue_length", "Requests waiting for a worker.", self.bridge.dispatcher.qsize())
        yield _gauge("fabomatic_bridge_workers", "Worker threads alive.", self.bridge.workers_alive())
        yield _gauge("fabomatic_bridge_connected", "1 while connected to the broker.", self.bridge.connected.is_set())
        yield _gauge("fabomatic_bridge_start_time_seconds", "When this bridge started (Unix time).", self.started)


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=float(value))


def bridge_registry(bridge: Bridge) -> CollectorRegistry:
    """The bridge's registry: its replies (from now on observed by ``bridge``), its stats, the fleet, the process."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry()
    bridge.reply_metrics = ReplyMetrics(registry)
    registry.register(BridgeCollector(bridge))
    # The scrape's own thread ends with the request: its database connection is closed with it.
    registry.register(FleetCollector(close_connections=True))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


# --- the fleet (database) -----------------------------------------------------------------------------------------


def fleet_metrics() -> list[Metric]:
    """The fleet's state from the database: four short queries, on small tables or an index (open uses)."""
    from machines.models import Machine, MaintenancePlan, Use

    from .models import Board

    since = Machine.online_since()
    machines = list(Machine.objects.order_by("pk").values_list("pk", "name", "last_seen"))
    overdue = dict(
        MaintenancePlan.objects.filter(MaintenancePlan.due_condition(F("machine__hours")))
        .order_by()
        .values("machine_id")
        .annotate(n=Count("pk"))
        .values_list("machine_id", "n")
    )
    online_boards = Board.objects.filter(machine__last_seen__gt=since, free_heap__isnull=False)
    heaps = {pk: heap for pk, heap in online_boards.values_list("machine_id", "free_heap") if heap is not None}
    open_uses = Use.objects.filter(ended_at__isnull=True).count()

    labels = ["machine", "name"]
    last_seen = GaugeMetricFamily(
        "fabomatic_machine_last_seen_timestamp_seconds", "When the machine's board was last heard from.", labels=labels
    )
    online = GaugeMetricFamily(
        "fabomatic_machine_online",
        f"1 if heard from in the last ONLINE_SECONDS ({settings.ONLINE_SECONDS} s).",
        labels=labels,
    )
    plans_due = GaugeMetricFamily(
        "fabomatic_machine_maintenance_overdue_plans",
        "Maintenance plans of the machine that are overdue.",
        labels=labels,
    )
    heap = GaugeMetricFamily(
        "fabomatic_board_free_heap_bytes", "Free heap the online board last reported.", labels=labels
    )
    for pk, name, seen in machines:
        key = [str(pk), name]
        if seen is not None:
            last_seen.add_metric(key, seen.timestamp())
        online.add_metric(key, float(seen is not None and seen > since))
        plans_due.add_metric(key, float(overdue.get(pk, 0)))
        if pk in heaps:
            heap.add_metric(key, float(heaps[pk]))
    families: list[Metric] = [
        _gauge("fabomatic_machines", "Machines configured.", len(machines)),
        _gauge(
            "fabomatic_boards_online",
            "Machines whose board was heard from in the last ONLINE_SECONDS.",
            sum(1 for _pk, _name, seen in machines if seen is not None and seen > since),
        ),
        _gauge("fabomatic_uses_open", "Uses in progress (not yet closed).", open_uses),
        _gauge(
            "fabomatic_machines_maintenance_overdue",
            "Machines with at least one overdue maintenance plan.",
            len(overdue),
        ),
        last_seen,
        online,
        plans_due,
        heap,
    ]
    if heaps:
        families.append(
            _gauge(
                "fabomatic_boards_lowest_free_heap_bytes",
                "Lowest free heap among the online boards.",
                min(heaps.values()),
            )
        )
    return families


class FleetCollector(Collector):
    """:func:`fleet_metrics` at scrape time, reused for ``ttl`` seconds; ``fabomatic_database_up`` 0 and no fleet
    gauges when the database cannot be read (the scrape itself still succeeds, with the process's metrics)."""

    def __init__(self, ttl: float = FLEET_TTL, *, close_connections: bool = False) -> None:
        self.ttl = ttl
        self.close_connections = close_connections
        self._lock = threading.Lock()
        self._taken = -float("inf")
        self._families: list[Metric] = []

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # concurrent scrapes wait for one reading instead of each making their own
            if time.monotonic() - self._taken >= self.ttl:
                self._families = self._read()
                self._taken = time.monotonic()
            families = self._families
        yield from families

    def _read(self) -> list[Metric]:
        try:
            families = fleet_metrics()
            up = 1.0
        except Exception:
            logger.warning("metrics: the fleet could not be read from the database", exc_info=True)
            families, up = [], 0.0
        finally:
            if self.close_connections:
                connections.close_all()
        return [
            _gauge("fabomatic_database_up", "1 if the fleet gauges could be read from the database.", up),
            *families,
        ]


# --- the bridge's HTTP server -------------------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """A scrape every 15 s is not worth a log line."""


def guarded(app: Callable[..., Iterable[bytes]], token: str) -> Callable[..., Iterable[bytes]]:
    """The WSGI app ``app`` behind :func:`allowed`: 403 for anyone else."""

    def guarded_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        headers = {
            key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")
        }
        if not allowed(environ.get("REMOTE_ADDR", ""), headers, token):
            start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"Forbidden: only local clients or a bearer token (METRICS_TOKEN).\n"]
        return app(environ, start_response)

    return guarded_app


def serve(registry: CollectorRegistry, port: int, address: str = "127.0.0.1", token: str = "") -> WSGIServer:
    """Serve ``registry`` on ``address:port`` from a daemon thread (one more per scrape); ``shutdown()`` stops it.
    Port 0 picks a free one (``server.server_port``)."""

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

    server = make_server(address.strip("[]"), port, guarded(make_wsgi_app(registry), token), Server, _QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
