"""The kiosk screen in Debian's headless Chromium against the real stack (daphne, Redis, Mosquitto, the bridge): a
board's swipe reaches it within seconds through the real Channels layer, revoking it in the portal blanks it, and it
fits a 1920×1080 TV, a 1366×768 screen and a 390×844 phone in English and Italian.

Screenshots stay in var/test-artifacts/screenshots/ (``kiosk-*.png``) for a person to look at.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from machines import kiosk
from machines.models import (
    Authorization,
    FaultReport,
    Machine,
    MachineCheck,
    MachineType,
    MaintenancePlan,
    Use,
)
from members.models import Card, Member, Role

from .boards import SimBoard
from .browser import allow_async_unsafe, bridge, chromium, daphne, log_in, restore_async_unsafe, screenshot, server_env
from .test_portal_look import _english_on

pytestmark = pytest.mark.browser

PASSWORD = "a-long-kiosk-test-password-9"
SCREENS = {"tv": (1920, 1080), "laptop": (1366, 768), "phone": (390, 844)}


@dataclass
class World:
    url: str
    broker_port: int
    browser: Browser


def _lab() -> None:
    admins, _ = Role.objects.get_or_create(
        name="ADMIN", defaults={"authorize_all": True, "maintenance": True, "backend_admin": True}
    )
    user, _ = Role.objects.get_or_create(name="USER")
    lasers = MachineType.objects.create(name="Lasers", requires_authorization=True)
    plain = MachineType.objects.create(name="Plain", requires_authorization=False)
    now = timezone.now()
    laser = Machine.objects.create(id=1, name="LASER 1", type=lasers)
    Machine.objects.create(id=2, name="PRINTER PRUSA MK4", type=plain, last_seen=now)
    Machine.objects.create(id=3, name="CNC MILL", type=plain, blocked=True, last_seen=now)
    lathe = Machine.objects.create(id=4, name="LATHE", type=plain, hours=30, last_seen=now)
    MaintenancePlan.objects.create(machine=lathe, hours_between=20, description="Oil the bed", lcd_message="oil bed")
    Machine.objects.create(id=5, name="BAND SAW", type=plain, last_seen=now)
    Machine.objects.create(id=6, name="VINYL CUTTER WITH A VERY LONG NAME INDEED", type=plain, last_seen=now)
    Machine.objects.create(id=7, name="SOLDERING STATION", type=plain, last_seen=now - timedelta(days=1))
    Machine.objects.create(id=8, name="UV PRINTER", type=plain, last_seen=now)
    FaultReport.objects.create(machine_id=5, severity=FaultReport.Severity.OUT_OF_ORDER, description="blade broken")
    MachineCheck.objects.create(machine_id=6, requested_at=now)
    Member.objects.create_superuser(email="boss@lab.test", password=PASSWORD, first_name="Boss", role=admins)
    nina = Member.objects.create_user(email="nina@lab.test", first_name="Nina", last_name="Rossi", role=user)
    ugo = Member.objects.create_user(email="ugo@lab.test", first_name="Ugo", last_name="Bianchi", role=user)
    Card.objects.create(uid="aabbccd3", member=nina)
    Authorization.objects.create(member=nina, machine=laser)
    Use.objects.create(member=ugo, machine_id=8, started_at=now - timedelta(minutes=83), last_seen=now)


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, redis, broker) -> Iterator[World]:
    allow_async = allow_async_unsafe()
    with django_db_blocker.unblock():
        _lab()
        env = server_env(connection.settings_dict["NAME"], redis_url=redis.url, broker_url=broker.url)
        env["CHANNELS_PREFIX"] = f"kiosk{os.getpid()}"
        env["LAB_NAME"] = "FabLab Bergamo"
    try:
        with daphne(env) as web, bridge(env) as the_bridge, chromium() as browser:
            yield World(url=web.url, broker_port=broker.port, browser=browser)
            assert the_bridge.process.poll() is None, the_bridge.output()
    finally:
        with django_db_blocker.unblock():
            call_command("flush", interactive=False, verbosity=0)
        restore_async_unsafe(allow_async)


@pytest.fixture(autouse=True)
def db(django_db_blocker) -> Iterator[None]:
    """Committed data the servers see, as in test_browser.py."""
    with django_db_blocker.unblock():
        yield


def _open(world: World, secret: str, *, size: str = "laptop", lang: str = "") -> Page:
    """The kiosk in a fresh browser: no cookie, no login, as on the lab's TV."""
    width, height = SCREENS[size]
    phone = size == "phone"
    context = world.browser.new_context(viewport={"width": width, "height": height}, is_mobile=phone, has_touch=phone)
    page = context.new_page()
    response = page.goto(f"{world.url}/kiosk/{secret}/" + (f"?lang={lang}" if lang else ""))
    assert response is not None and response.status == 200
    expect(page.locator(".k-live")).to_have_attribute("data-live", "live", timeout=10_000)
    return page


def test_a_swipe_on_a_board_reaches_the_kiosk_within_seconds(world: World) -> None:
    _, secret = kiosk.create_screen("Entrance TV", by=None)
    page = _open(world, secret)
    errors: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    tile = page.locator('.k-tile[data-id="1"]')
    expect(tile).to_have_attribute("data-state", "offline")
    # Locks first, then blocked, then maintenance due, then the rest by name.
    names = page.locator(".k-tile .k-name").all_inner_texts()
    assert names[:4] == ["BAND SAW", "VINYL CUTTER WITH A VERY LONG NAME INDEED", "CNC MILL", "LATHE"], names

    board = SimBoard(world.broker_port, 1)
    try:
        board.send(
            {"action": "alive", "version": "v1.0.4", "ip": "192.168.1.50", "serial": "dcda0c419794", "heap": "1"}
        )
        expect(tile).to_have_attribute("data-state", "free", timeout=5_000)
        assert board.ask({"action": "checkuser", "uid": "aabbccd3"})["is_valid"] is True
        board.ask({"action": "startuse", "uid": "aabbccd3"})
        expect(tile).to_have_attribute("data-state", "in_use", timeout=5_000)
        expect(tile.locator(".k-user")).to_have_text("Nina")
        expect(page.locator('.k-counter[data-state="in_use"] .k-count')).to_have_text("2")
        first = tile.locator(".k-elapsed").inner_text()
        expect(tile.locator(".k-elapsed")).not_to_have_text(first)  # ticks in the page
        html = page.content()
        for staff_data in ("Rossi", "Bianchi", "nina@lab.test", "aabbccd3", "192.168.1.50", "v1.0.4"):
            assert staff_data not in html, staff_data
        board.ask({"action": "stopuse", "uid": "aabbccd3", "duration": 4})
        expect(tile).to_have_attribute("data-state", "free", timeout=5_000)
    finally:
        board.close()
    assert requests == [] and errors == []  # live through the socket: no polling, no reload
    page.context.close()


def test_revoking_the_screen_in_the_portal_blanks_it(world: World) -> None:
    screen, secret = kiosk.create_screen("Workshop TV", by=None)
    page = _open(world, secret)
    expect(page.locator(".k-tile")).to_have_count(8)

    staff = world.browser.new_context(viewport={"width": 1366, "height": 900})
    portal = staff.new_page()
    log_in(portal, world.url, "boss@lab.test", PASSWORD)
    portal.goto(f"{world.url}/admin/machines/kioskscreen/{screen.pk}/change/")
    screenshot(portal, "kiosk-admin-change")
    portal.get_by_role("button", name="Revoke").click()
    screenshot(portal, "kiosk-admin-revoke-confirm")
    portal.get_by_role("button", name="Yes, revoke it").click()
    expect(portal.locator(".messagelist")).to_contain_text("is revoked")
    portal.goto(f"{world.url}/admin/machines/kioskscreen/")
    expect(portal.locator("#result_list")).to_contain_text("Revoked on")
    screenshot(portal, "kiosk-admin-list")
    staff.close()

    expect(page.locator(".k-gone")).to_be_visible(timeout=5_000)
    expect(page.locator(".k-tile")).to_have_count(0)
    response = page.goto(f"{world.url}/kiosk/{secret}/")
    assert response is not None and response.status == 404
    page.context.close()


@pytest.mark.parametrize("lang", ["en", "it"])
@pytest.mark.parametrize("size", list(SCREENS))
def test_the_kiosk_fits_every_screen(world: World, size: str, lang: str) -> None:
    _, secret = kiosk.create_screen(f"{size} {lang}", by=None)
    page = _open(world, secret, size=size, lang=lang)
    try:
        expect(page.locator(".k-tile")).to_have_count(8)
        assert page.evaluate("document.documentElement.lang") == lang
        width = SCREENS[size][0]
        wide = page.evaluate("document.documentElement.scrollWidth")
        assert wide <= width, f"{wide} px wide on a {width} px screen"
        for tile in page.locator(".k-tile").all():  # no text spills out of its tile
            assert tile.evaluate("e => e.scrollWidth <= e.clientWidth"), tile.inner_text()
        state = page.locator('.k-tile[data-id="5"] .k-state').inner_text()
        assert state.lower() == ("out of order" if lang == "en" else "fuori servizio")
        # No English left on the Italian screen (the same check finds the English one's phrases).
        assert (_english_on(page) == []) == (lang == "it")
    except BaseException:
        screenshot(page, f"kiosk-{size}-{lang}-FAILED")
        raise
    screenshot(page, f"kiosk-{size}-{lang}")
    page.context.close()


@pytest.mark.parametrize("lang", ["en", "it"])
def test_staff_create_a_screen_on_a_phone_and_its_address_works(world: World, lang: str) -> None:
    context = world.browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    context.add_cookies([{"name": "django_language", "value": lang, "url": world.url}])
    portal = context.new_page()
    log_in(portal, world.url, "boss@lab.test", PASSWORD)
    portal.goto(f"{world.url}/admin/machines/kioskscreen/add/")
    portal.fill("#id_name", f"Phone-made TV {lang}")
    portal.locator("input[name=_save]").click()
    address = portal.locator("#kiosk-url")
    expect(address).to_contain_text("/kiosk/")
    expect(portal.locator("[data-fab-copy]")).to_be_visible()
    try:
        assert portal.evaluate("document.documentElement.scrollWidth") <= 390
    except BaseException:
        screenshot(portal, f"kiosk-created-phone-{lang}-FAILED")
        raise
    screenshot(portal, f"kiosk-created-phone-{lang}")
    url = address.inner_text().strip()
    secret = url.rstrip("/").rsplit("/", 1)[1]
    context.close()
    page = _open(world, secret, size="phone")
    expect(page.locator(".k-tile")).to_have_count(8)
    page.context.close()


def test_a_big_lab_fits_the_tv_without_scrolling(world: World) -> None:
    """A kiosk cannot scroll: 40 machines shrink onto one 1920×1080 screen, still in the order, still read whole."""
    plain = MachineType.objects.get(name="Plain")
    extra = [Machine.objects.create(id=100 + i, name=f"PRINTER {i:02d}", type=plain) for i in range(32)]
    try:
        _, secret = kiosk.create_screen("Big TV", by=None)
        page = _open(world, secret, size="tv")
        expect(page.locator(".k-tile")).to_have_count(40)
        page.wait_for_function("document.documentElement.scrollHeight <= window.innerHeight")
        assert page.locator(".k-tile .k-name").first.inner_text() == "BAND SAW"
        for tile in page.locator(".k-tile").all():
            assert tile.evaluate("e => e.scrollWidth <= e.clientWidth"), tile.inner_text()
        screenshot(page, "kiosk-tv-40-machines")
        page.context.close()
    finally:
        for machine in extra:
            machine.delete()
