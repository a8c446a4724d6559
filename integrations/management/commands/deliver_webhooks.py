"""``manage.py deliver_webhooks``: the webhook delivery worker (a long-running process, fabomatic-webhooks.service)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from integrations import delivery

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Deliver webhook events: POST each to the subscriptions that want it, signed, retrying with backoff for "
        "WEBHOOK_RETRY_HOURS. Runs until stopped (SIGTERM, Ctrl-C); --once does one pass."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="One pass, then exit.")
        parser.add_argument("--interval", type=float, default=1.0, help="Seconds between passes.")

    def handle(self, *args: Any, **opts: Any) -> None:
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
        logger.info("webhook delivery worker started")
        delivery.run(stop, opts["interval"], once=opts["once"])
        logger.info("webhook delivery worker stopped")
