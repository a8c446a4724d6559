"""Real Mosquitto and Redis servers for the tests, each on a free port, started and stopped by the tests; and
small helpers the test modules share."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def first_group(pattern: str, text: str, flags: int = 0) -> str:
    """Group 1 of the first match of ``pattern`` in ``text``; the test fails if nothing matches."""
    found = re.search(pattern, text, flags)
    assert found is not None, f"{pattern!r} not found in {text[:200]!r}"
    return found.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


def _binary(name: str, fallback: str) -> str:
    found = shutil.which(name) or (fallback if Path(fallback).exists() else None)
    if not found:
        raise RuntimeError(f"{name} is not installed: run `make test`, which installs it")
    return found


@dataclass
class Broker:
    port: int
    conf: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [_binary("mosquitto", "/usr/sbin/mosquitto"), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self, downtime: float = 0.5) -> None:
        self.stop()
        time.sleep(downtime)
        self.start()


def dev_conf_local_part() -> str:
    """deploy/mosquitto/dev.conf up to its boards' section: global settings and the loopback listener (1884)."""
    text = (ROOT / "deploy" / "mosquitto" / "dev.conf").read_text()
    local, marker, _boards = text.partition("\n# --- The boards")
    assert marker and "listener 1884 127.0.0.1" in local, "deploy/mosquitto/dev.conf lost its two sections"
    return local


@contextmanager
def mosquitto(extra_conf: str = "") -> Iterator[Broker]:
    """A throwaway broker with the development configuration (set_tcp_nodelay) on a free port: its anonymous
    loopback listener only (the boards' listener of `make run`, on every interface, is cut off)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mosquitto-") as tmp:
        base = dev_conf_local_part()
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(base.replace("listener 1884 127.0.0.1", f"listener {port} 127.0.0.1") + "\n" + extra_conf)
        broker = Broker(port=port, conf=conf)
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()


@dataclass
class Redis:
    port: int
    pid: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextmanager
def redis_server() -> Iterator[Redis]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="redis-") as tmp:
        proc = subprocess.Popen(
            [
                _binary("redis-server", "/usr/bin/redis-server"),
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
                "--maxclients",
                "10000",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            yield Redis(port=port, pid=proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
