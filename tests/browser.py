"""Real servers and a real headless Chromium for the browser tests (no browser download: Debian's chromium)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .services import ROOT, free_port, wait_for_port

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# What the browser tests leave for a person to look at stays in the project's ignored var/: the screenshots, and the
# server logs of a test that failed (those of a passing test are deleted). Nothing goes to the system's /tmp.
ARTIFACTS = ROOT / "var" / "test-artifacts"
SCREENSHOTS = Path(os.environ.get("FABOMATIC_SCREENSHOTS", ARTIFACTS / "screenshots"))


def server_env(database: str, *, redis_url: str, broker_url: str = "mqtt://127.0.0.1:1") -> dict[str, str]:
    """The environment of a daphne or bridge subprocess sharing the tests' file database and Redis."""
    return {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{database}",
        "REDIS_URL": redis_url,
        "MQTT_BROKER_URL": broker_url,
        "SECRET_KEY": "browser-tests-insecure-key",
        "DEBUG": "0",
        "SECURE_SSL": "0",  # plain http on localhost: cookies must not be Secure
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
        "FABOMATIC_ENV_FILE": "/nonexistent",
    }


@dataclass
class Process:
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@dataclass
class Daphne(Process):
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _spawn(args: list[str], env: dict[str, str], name: str) -> tuple[subprocess.Popen, Path]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / f"{name}-{uuid.uuid4().hex[:8]}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return process, log


@contextmanager
def _log_kept_on_failure(server: Process) -> Iterator[None]:
    """Stop the server when the block ends; keep its log only if the block failed."""
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        server.stop()
        if not failed:
            server.log.unlink(missing_ok=True)


@contextmanager
def daphne(env: dict[str, str], port: int | None = None) -> Iterator[Daphne]:
    """The real ASGI server of the portal (HTTP + websockets) on a free port (or on ``port``, when a test must know
    the address before the server starts, e.g. to register it at an identity provider)."""
    port = port or free_port()
    args = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "fabomatic.asgi:application"]
    process, log = _spawn(args, env, "daphne")
    server = Daphne(process=process, log=log, port=port)
    with _log_kept_on_failure(server):
        wait_for_port(port, timeout=30)
        yield server


@contextmanager
def bridge(env: dict[str, str]) -> Iterator[Process]:
    """The real board bridge, ``manage.py mqtt_listen``."""
    # As the Procfile and the systemd unit start it: only the bridge's apps.
    process, log = _spawn(
        [sys.executable, "manage.py", "mqtt_listen"], {**env, "FABOMATIC_PROCESS": "bridge"}, "bridge"
    )
    running = Process(process=process, log=log)
    with _log_kept_on_failure(running):
        yield running


@contextmanager
def chromium() -> Iterator[Browser]:
    """Playwright's Chromium driver on Debian's browser binary."""
    from playwright.sync_api import sync_playwright

    # A home of its own: Chromium writes its crash-report settings and dconf cache there, not in the user's.
    with tempfile.TemporaryDirectory(prefix="fabomatic-chromium-") as home, sync_playwright() as p:
        env: dict[str, str | float | bool] = {**os.environ, "HOME": home, "XDG_CONFIG_HOME": f"{home}/.config"}
        env["XDG_CACHE_HOME"] = f"{home}/.cache"
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, env=env)
        try:
            yield browser
        finally:
            browser.close()


def log_in(page: Page, base_url: str, email: str, password: str) -> None:
    """Through the real login form, as a person would."""
    page.goto(f"{base_url}/admin/login/?next=/admin/")
    page.fill("#id_username", email)
    page.fill("#id_password", password)
    page.locator("#login-form [type=submit]").click()
    page.wait_for_url(f"{base_url}/admin/")


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"


def allow_async_unsafe() -> str | None:
    """Turn off Django's async-safety check for a module whose browser tests share one server (Playwright's sync API
    runs an event loop in the test's thread, where the tests still query the database); returns what it was, for
    :func:`restore_async_unsafe`."""
    before = os.environ.get(ASYNC_UNSAFE)
    os.environ[ASYNC_UNSAFE] = "true"
    return before


def restore_async_unsafe(before: str | None) -> None:
    if before is None:
        os.environ.pop(ASYNC_UNSAFE, None)
    else:
        os.environ[ASYNC_UNSAFE] = before
