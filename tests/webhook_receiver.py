"""A real webhook receiver for the tests: http.server in a thread, checking each request as README "Webhooks" says a
receiver must (the HMAC-SHA256 signature of "<timestamp>.<body>", a timestamp at most five minutes old)."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

TOLERANCE = 300


def verify(secret: str, headers: Any, body: bytes, now: float | None = None) -> bool:
    """What a receiver does (the README's example, word for word)."""
    timestamp = headers.get("X-Fabomatic-Timestamp", "")
    signature = headers.get("X-Fabomatic-Signature", "")
    if not timestamp.isdigit() or abs((now or time.time()) - int(timestamp)) > TOLERANCE:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature, "sha256=" + expected)


@dataclass
class Received:
    event: str
    delivery: str
    body: dict[str, Any]
    valid: bool


@dataclass
class Receiver:
    secret: str = ""
    status: int = 200  # what to answer
    hang: threading.Event = field(default_factory=threading.Event)  # set: each POST waits for `release`
    release: threading.Event = field(default_factory=threading.Event)
    in_flight: int = 0  # POSTs received and not yet answered
    received: list[Received] = field(default_factory=list)
    rejected: int = 0
    arrived: threading.Event = field(default_factory=threading.Event)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                valid = verify(receiver.secret, self.headers, body)
                event = self.headers.get("X-Fabomatic-Event", "")
                receiver.received.append(
                    Received(event, self.headers.get("X-Fabomatic-Delivery", ""), json.loads(body), valid)
                )
                receiver.in_flight += 1
                receiver.arrived.set()
                if receiver.hang.is_set():
                    receiver.release.wait(30)
                receiver.in_flight -= 1
                if not valid:
                    receiver.rejected += 1
                    self.send_response(400)
                else:
                    self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def events(self) -> list[str]:
        return [r.event for r in self.received]
