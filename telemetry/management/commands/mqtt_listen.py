"""``manage.py mqtt_listen``: the board bridge. Runs until SIGTERM or SIGINT, then exits 0."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from fabomatic import memory
from telemetry.mqtt import Bridge


class Command(BaseCommand):
    help = (
        "Answer the Fab-O-Matic boards over MQTT: subscribe to <MQTT_TOPIC>/+ and reply on <MQTT_TOPIC>/<id>/reply. "
        "Closes orphan uses (silent > ORPHAN_SECONDS) and publishes stats on stats/<client id> every 5 s. "
        "Reconnects by itself; stops cleanly on SIGTERM/SIGINT."
    )
    # The bridge must keep running whatever the state of the portal's admin configuration.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--client-id",
            default="",
            help="MQTT client id (default: MQTT_CLIENT_ID, else fabomatic-<host>-<pid>-<random>).",
        )
        parser.add_argument(
            "--housekeeping", type=float, default=60.0, help="Seconds between orphan checks (default 60)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.MQTT.get("HOST") or not settings.MQTT.get("TOPIC"):
            raise CommandError("MQTT_BROKER_URL and MQTT_TOPIC must be set")
        self.shutdown = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        bridge = Bridge(client_id=options["client_id"] or None, housekeeping_every=options["housekeeping"])
        metrics_server = self.serve_metrics(bridge) if settings.METRICS_PORT else None
        bridge.start()
        memory.start_trimmer()
        memory.freeze_startup_objects()
        self.stdout.write(f"Bridge {bridge.client_id} → {settings.MQTT['HOST']}:{settings.MQTT['PORT']}")
        while not self.shutdown.is_set():
            bridge.tick()
            self.shutdown.wait(1.0)
        bridge.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
        self.stdout.write("Bridge stopped.")

    def serve_metrics(self, bridge: Bridge) -> Any:
        """Prometheus metrics on METRICS_ADDRESS:METRICS_PORT, from a thread of their own (prometheus-client is
        imported only then: 3 MB the bridge does not carry otherwise)."""
        from telemetry import metrics

        address, port = settings.METRICS_ADDRESS, settings.METRICS_PORT
        try:
            server = metrics.serve(metrics.bridge_registry(bridge), port, address, settings.METRICS_TOKEN)
        except OSError as exc:
            raise CommandError(f"metrics: cannot listen on {address}:{port}: {exc}") from exc
        host = f"[{address}]" if ":" in address else address
        self.stdout.write(f"Metrics on http://{host}:{server.server_port}/metrics")
        return server

    def on_signal(self, signum: int, frame: Any) -> None:
        self.shutdown.set()
