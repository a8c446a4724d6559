"""Headless Chromium against the real stack: daphne + Redis + Mosquitto + the bridge, one of each per module.

The servers are subprocesses, so they must see committed data: the module's rows are written outside any
test transaction (see the ``db`` fixture below) and the database is flushed when the module ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from io import BytesIO
from typing import Any, TypeVar

import openpyxl
import pytest
import websockets
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from machines.models import Authorization, Machine, MachineType, MaintenancePlan, Use
from members.models import Card, Member, Role, UnknownCard

from .boards import SimBoard
from .browser import allow_async_unsafe, bridge, chromium, daphne, log_in, restore_async_unsafe, screenshot, server_env
from .services import ROOT

pytestmark = pytest.mark.browser

PASSWORD = "a-long-browser-test-password-9"
FIRMWARE = "hardware-rev0-it_IT,v1.0.4"
T = TypeVar("T")


@dataclass
class World:
    url: str
    broker_port: int
    browser: Browser
    page: Page  # logged in as staff, shared by the module's tests
    staff: Member
    nina: Member
    ugo: Member
    laser: Machine
    printer: Machine
    env: dict[str, str]  # what the servers run with (database, Redis, broker)


def _lab() -> dict:
    user, _ = Role.objects.get_or_create(name="USER")
    admins, _ = Role.objects.get_or_create(name="ADMIN", defaults={"authorize_all": True, "maintenance": True})
    t1 = MachineType.objects.create(name="Lasers", requires_authorization=True)
    t2 = MachineType.objects.create(name="Printers", requires_authorization=False)
    now = timezone.now()
    laser = Machine.objects.create(id=1, name="LASER 1", type=t1)
    printer = Machine.objects.create(id=2, name="PRINTER 1", type=t2)
    Machine.objects.create(id=3, name="CNC MILL", type=t2, blocked=True, last_seen=now)
    lathe = Machine.objects.create(id=4, name="LATHE", type=t2, hours=30, last_seen=now)
    MaintenancePlan.objects.create(machine=laser, hours_between=10, description="Clean the lens", lcd_message="lens")
    MaintenancePlan.objects.create(machine=lathe, hours_between=20, description="Oil the bed", lcd_message="oil bed")
    staff = Member.objects.create_superuser(email="desk@lab.test", password=PASSWORD, first_name="Desk", role=admins)
    nina = Member.objects.create_user(email="nina@lab.test", first_name="Nina", last_name="Rossi", role=user)
    ugo = Member.objects.create_user(email="ugo@lab.test", first_name="Ugo", last_name="Bianchi", role=user)
    Card.objects.create(uid="aabbccd3", member=nina)
    Card.objects.create(uid="aabbccd4", member=ugo)
    Authorization.objects.create(member=nina, machine=laser)
    return {"staff": staff, "nina": nina, "ugo": ugo, "laser": laser, "printer": printer}


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run websocket clients beside Playwright, whose sync API already owns this thread's event loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, redis, broker) -> Iterator[World]:
    # Playwright's sync API runs an event loop in this thread, which Django's ORM would take for async code.
    allow_async = allow_async_unsafe()
    with django_db_blocker.unblock():
        data = _lab()
        env = server_env(connection.settings_dict["NAME"], redis_url=redis.url, broker_url=broker.url)
        env["CHANNELS_PREFIX"] = f"browser{os.getpid()}"
    try:
        with daphne(env) as web, bridge(env) as the_bridge, chromium() as browser:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            page = context.new_page()
            log_in(page, web.url, "desk@lab.test", PASSWORD)
            yield World(url=web.url, broker_port=broker.port, browser=browser, page=page, env=env, **data)
            context.close()
            assert the_bridge.process.poll() is None, the_bridge.output()
    finally:
        with django_db_blocker.unblock():
            call_command("flush", interactive=False, verbosity=0)
        restore_async_unsafe(allow_async)


@pytest.fixture(autouse=True)
def db(django_db_blocker) -> Iterator[None]:
    """Overrides pytest-django's ``db`` in this module: no test transaction, the tests read and write the
    committed data the servers see (a transaction here would hide rows from them, and SQLite's IMMEDIATE
    transactions would even block their writes). Being named ``db`` also makes pytest-django create the
    test database when only this module runs."""
    with django_db_blocker.unblock():
        yield


@pytest.fixture
def board(world: World) -> Iterator[Callable[[int], SimBoard]]:
    boards: list[SimBoard] = []

    def make(machine_id: int) -> SimBoard:
        boards.append(SimBoard(world.broker_port, machine_id))
        return boards[-1]

    yield make
    for b in boards:
        b.close()


def _dashboard(world: World) -> Page:
    page = world.page
    page.goto(f"{world.url}/admin/")
    expect(page.locator(".fab-live")).to_have_attribute("data-live", "live")
    return page


def test_it_shows_a_board_event_on_an_open_dashboard_without_reload_or_polling(world: World, board) -> None:
    page = _dashboard(world)
    tile = page.locator('.fab-tile[data-id="1"]')
    expect(tile).to_have_attribute("data-state", "offline")
    page.evaluate("window.__sameDocument = true")
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))

    laser = board(1)
    laser.send({"action": "alive", "version": FIRMWARE, "ip": "192.168.1.50", "serial": "dcda0c419794", "heap": "1"})
    expect(tile).to_have_attribute("data-state", "free")
    expect(tile.locator(".fab-tile-fw")).to_have_text(FIRMWARE)

    assert laser.ask({"action": "checkuser", "uid": "AABBCCD3"})["is_valid"] is True
    laser.ask({"action": "startuse", "uid": "aabbccd3"})
    expect(tile).to_have_attribute("data-state", "in_use")
    expect(tile.locator(".fab-tile-user")).to_have_text("Nina")
    expect(page.locator('.fab-counter[data-state="in_use"] .fab-count')).to_have_text("1")
    # The elapsed time ticks in the page, with no message from the server.
    first = tile.locator(".fab-tile-elapsed").inner_text()
    expect(tile.locator(".fab-tile-elapsed")).not_to_have_text(first)
    screenshot(page, "dashboard-desktop")

    laser.ask({"action": "stopuse", "uid": "aabbccd3", "duration": 4})
    expect(tile).to_have_attribute("data-state", "free")
    expect(page.locator('.fab-counter[data-state="in_use"] .fab-count')).to_have_text("0")
    assert page.evaluate("window.__sameDocument") is True
    assert requests == []
    assert errors == []
    assert Use.objects.filter(machine_id=1, member=world.nina, ended_at__isnull=False).count() == 1


def test_it_turns_a_silent_machine_offline_on_screen_by_itself(world: World) -> None:
    # Heard from 4 s short of the online window: FREE now, OFFLINE four seconds later, with no event at all.
    Machine.objects.filter(pk=2).update(last_seen=timezone.now() - timedelta(seconds=86))
    page = _dashboard(world)
    tile = page.locator('.fab-tile[data-id="2"]')
    expect(tile).to_have_attribute("data-state", "free")
    expect(tile).to_have_attribute("data-state", "offline", timeout=15_000)
    expect(tile.locator(".fab-tile-state")).to_have_text("Offline")


def test_it_reconnects_and_catches_up_after_the_socket_drops(world: World) -> None:
    page = _dashboard(world)
    page.evaluate("window.fabDashboard.socket().close()")
    expect(page.locator(".fab-live")).to_have_attribute("data-live", "down")
    # Changed while the page was disconnected: the snapshot sent on reconnect brings it.
    Machine.objects.filter(pk=3).update(blocked=False, last_seen=timezone.now())
    expect(page.locator(".fab-live")).to_have_attribute("data-live", "live", timeout=10_000)
    expect(page.locator('.fab-tile[data-id="3"]')).to_have_attribute("data-state", "free")
    Machine.objects.filter(pk=3).update(blocked=True)


def test_it_draws_the_dashboard_on_a_phone(world: World) -> None:
    context = world.browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    # Playwright types cookies() as Cookie and add_cookies() as SetCookieParam: the same keys, held incompatible
    # only because SetCookieParam's values are Optional. Passing one to the other is Playwright's documented use.
    context.add_cookies(world.page.context.cookies())  # type: ignore[arg-type]
    page = context.new_page()
    page.goto(f"{world.url}/admin/")
    expect(page.locator(".fab-live")).to_have_attribute("data-live", "live")
    tiles = page.locator(".fab-tile")
    expect(tiles).to_have_count(4)
    # Nothing wider than the screen: no sideways scrolling on a phone.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "dashboard-phone")
    context.close()


def test_it_refuses_the_live_socket_without_a_staff_session(world: World) -> None:
    ws_url = world.url.replace("http://", "ws://") + "/ws/dashboard/"

    async def attempt(cookie: str | None) -> str:
        headers = {"Origin": world.url, **({"Cookie": cookie} if cookie else {})}
        try:
            async with websockets.connect(ws_url, additional_headers=headers) as ws:
                return json.loads(await ws.recv())["type"]
        except websockets.InvalidStatus as exc:
            return str(exc.response.status_code)

    session = next(c for c in world.page.context.cookies() if c["name"] == "sessionid")["value"]
    assert _run(attempt(None)) == "403"
    assert _run(attempt("sessionid=forged")) == "403"
    assert _run(attempt(f"sessionid={session}")) == "snapshot"


def test_it_delivers_one_event_to_many_open_dashboards(world: World) -> None:
    """A light version of the benchmark's 500 sockets: 60 dashboards on the real daphne + Redis layer."""
    ws_url = world.url.replace("http://", "ws://") + "/ws/dashboard/"
    session = next(c for c in world.page.context.cookies() if c["name"] == "sessionid")["value"]
    headers = {"Origin": world.url, "Cookie": f"sessionid={session}"}

    async def run() -> list[dict]:
        sockets = [await websockets.connect(ws_url, additional_headers=headers) for _ in range(60)]
        try:
            for ws in sockets:
                assert json.loads(await ws.recv())["type"] == "snapshot"
            # Another process publishes, as the bridge does.
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "manage.py",
                "shell",
                "-c",
                "from django.utils import timezone; from machines.dashboard import events;"
                "events.send([events.heartbeat(4, timezone.now())])",
                cwd=ROOT,
                env=world.env,
            )
            assert await proc.wait() == 0
            return [json.loads(await asyncio.wait_for(ws.recv(), 10)) for ws in sockets]
        finally:
            for ws in sockets:
                await ws.close()

    received = _run(run())
    assert len(received) == 60
    assert {(m["type"], m["id"]) for m in received} == {("machine.heartbeat", 4)}


def test_it_registers_a_member_from_a_card_swiped_on_a_board(world: World, board) -> None:
    printer = board(2)
    reply = printer.ask({"action": "checkuser", "uid": "DEADBEEF"})
    assert (reply["request_ok"], reply["is_valid"]) == (True, False)
    assert UnknownCard.objects.filter(uid="deadbeef").exists()

    page = world.page
    page.goto(f"{world.url}/admin/members/member/")
    row = page.locator("tr, li").filter(has_text="deadbeef").last
    row.get_by_role("link", name="Register as new member").click()
    expect(page.locator("input[name$='-uid']").first).to_have_value("deadbeef")
    page.fill("#id_first_name", "Greta")
    page.fill("#id_last_name", "Verdi")
    if page.locator("#id_role").count():
        page.select_option("#id_role", label="USER — authorized machines only")
    page.locator("input[name=_save]").click()
    expect(page.locator("ul.messagelist")).to_contain_text("Greta")

    greta = Member.objects.get(first_name="Greta", last_name="Verdi")
    assert list(greta.cards.values_list("uid", flat=True)) == ["deadbeef"]
    assert not UnknownCard.objects.filter(uid="deadbeef").exists()
    # The card now works on the machine where it was first swiped.
    assert printer.ask({"action": "checkuser", "uid": "deadbeef"})["is_valid"] is True


def test_it_exports_exactly_the_filtered_uses_to_xlsx(world: World) -> None:
    now = timezone.now()
    for i in range(3):
        start = now - timedelta(days=3, hours=i)
        Use.objects.create(
            member=world.ugo, machine=world.printer, started_at=start, ended_at=start + timedelta(minutes=30),
            last_seen=start + timedelta(minutes=30), duration=1800,
        )  # fmt: skip
    start = now - timedelta(days=2)
    Use.objects.create(
        member=world.nina, machine=world.laser, started_at=start, ended_at=start + timedelta(minutes=10),
        last_seen=start + timedelta(minutes=10), duration=600,
    )  # fmt: skip
    expected = Use.objects.filter(machine=world.printer).count()
    assert 0 < expected < Use.objects.count()

    page = world.page
    page.goto(f"{world.url}/admin/machines/use/?machine__id__exact={world.printer.pk}")
    with page.expect_download() as download_info:  # one click: no form in between
        page.get_by_role("link", name=re.compile(r"^\s*Export\s*$")).first.click()
    download = download_info.value
    assert download.suggested_filename.endswith(".xlsx")
    sheet = openpyxl.load_workbook(BytesIO(open(download.path(), "rb").read()), read_only=True).active
    rows = list(sheet.iter_rows(values_only=True))
    header, body = rows[0], [r for r in rows[1:] if any(v is not None for v in r)]
    assert len(body) == expected
    text = json.dumps([[str(v) for v in r] for r in body])
    assert "PRINTER 1" in text and "LASER 1" not in text
    assert not any("password" in str(h).lower() for h in header)
