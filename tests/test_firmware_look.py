"""The Firmware page with a rollout in progress, in Debian's headless Chromium: at 1366×900 and 390×844, in English
and Italian. It fits the screen, an Italian page holds no English phrase, and the progress follows the database
without a reload (the page polls its status endpoint every 2 s). Screenshots in var/test-artifacts/screenshots/
(``firmware-*.png``, ``…-FAILED.png`` on failure)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from machines.models import Machine, MachineType, Use
from members.models import Member, Role
from telemetry import rollout
from telemetry.models import Board, FirmwareImage, HeapSample, OtaPush, Rollout

from .browser import allow_async_unsafe, chromium, daphne, log_in, restore_async_unsafe, screenshot, server_env
from .test_portal_look import _english_on, _fits

pytestmark = pytest.mark.browser

PASSWORD = "a-long-firmware-test-password-9"
ENV = "hardware-rev0-it_IT"
VIEWPORTS = {"desktop": (1366, 900), "phone": (390, 844)}


@dataclass
class World:
    url: str
    browser: Browser
    cookies: list
    rollout: Rollout


def _lab() -> Rollout:
    admins, _ = Role.objects.get_or_create(name="BACKEND", defaults={"backend_admin": True})
    kind = MachineType.objects.create(name="Lasers")
    now = timezone.now()
    names = ["LASER 1", "LASER 2 (big bed, CO2 80 W)", "PRINTER 1", "CNC MILL"]
    machines = [Machine.objects.create(id=i + 1, name=n, type=kind, last_seen=now) for i, n in enumerate(names)]
    for m in machines:
        Board.objects.create(
            machine=m, ip_address=f"192.168.1.{m.pk + 40}", firmware=f"{ENV},1.0.1-3-g0ab6099", free_heap=180000
        )
        for hour in range(6):
            HeapSample.objects.create(
                machine=m, hour=now - timedelta(hours=6 - hour), minimum=170000 + hour * 1000 * m.pk
            )
    boss = Member.objects.create_user(
        email="boss@lab.test", password=PASSWORD, first_name="Boss", role=admins, is_staff=True
    )
    Use.objects.create(member=boss, machine=machines[2], started_at=now, last_seen=now)
    image = FirmwareImage.objects.create(
        environment=ENV, version="1.0.4", data=b"\xe9" + bytes(8000), md5="0" * 32, size=8001, uploaded_by=boss
    )
    r = Rollout.objects.create(image=image, started_by=boss)
    states = [
        (OtaPush.State.DONE, ""),
        (OtaPush.State.CONFIRMING, ""),
        (OtaPush.State.WAITING, OtaPush.Reason.IN_USE),
        (OtaPush.State.WAITING, ""),
    ]
    for i, (m, (state, reason)) in enumerate(zip(machines, states, strict=True)):
        OtaPush.objects.create(
            rollout=r, machine=m, position=i, state=state, reason=reason, from_version=m.board.firmware
        )
    return r


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker) -> Iterator[World]:
    allow_async = allow_async_unsafe()
    with django_db_blocker.unblock():
        r = _lab()
        env = server_env(connection.settings_dict["NAME"], redis_url="")
    try:
        # Holding the runner's lock: the page must not start a real runner pushing to 192.168.1.x.
        with rollout.runner_lock() as mine, daphne(env) as web, chromium() as browser:
            assert mine
            context = browser.new_context()
            page = context.new_page()
            log_in(page, web.url, "boss@lab.test", PASSWORD)
            cookies = context.cookies()
            context.close()
            yield World(url=web.url, browser=browser, cookies=cookies, rollout=r)
    finally:
        with django_db_blocker.unblock():
            call_command("flush", interactive=False, verbosity=0)
        restore_async_unsafe(allow_async)


@pytest.fixture(autouse=True)
def db(django_db_blocker) -> Iterator[None]:
    with django_db_blocker.unblock():
        yield


@contextmanager
def _shot(page: Page, name: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        screenshot(page, f"{name}-FAILED")
        raise
    screenshot(page, name)


@pytest.mark.parametrize("language", ["en", "it"])
@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_the_firmware_page_follows_a_rollout(world: World, viewport: str, language: str) -> None:
    width, height = VIEWPORTS[viewport]
    phone = viewport == "phone"
    context = world.browser.new_context(viewport={"width": width, "height": height}, is_mobile=phone, has_touch=phone)
    context.add_cookies(world.cookies)
    context.add_cookies([{"name": settings.LANGUAGE_COOKIE_NAME, "value": language, "url": world.url}])
    page = context.new_page()
    laser2 = OtaPush.objects.get(rollout=world.rollout, position=1)
    OtaPush.objects.filter(pk=laser2.pk).update(state=OtaPush.State.CONFIRMING)
    it = language == "it"
    try:
        response = page.goto(world.url + "/admin/system/firmware/")
        assert response is not None and response.ok
        with _shot(page, f"firmware-{viewport}-{language}"):
            rows = page.locator("#fab-rollout-list tbody tr")
            expect(rows).to_have_count(4)
            expect(rows.nth(0)).to_contain_text("canarino" if it else "canary")
            expect(rows.nth(1)).to_contain_text("in attesa della scheda" if it else "waiting for the board")
            expect(rows.nth(2)).to_contain_text("in attesa: in uso" if it else "waiting: in use")
            _fits(page)
            if it:
                assert _english_on(page) == []
            # The board comes back: the page shows it within a few seconds, without a reload.
            OtaPush.objects.filter(pk=laser2.pk).update(state=OtaPush.State.DONE, finished_at=timezone.now())
            expect(rows.nth(1)).to_contain_text("completato" if it else "done", timeout=8000)
            _fits(page)
        page.goto(world.url + "/admin/system/")
        with _shot(page, f"firmware-system-{viewport}-{language}"):
            boards = page.locator(".fab-system .module", has_text="192.168.1.41")
            expect(boards).to_contain_text("1.0.4")  # "behind: 1.0.4 available"
            assert page.locator(".fab-spark").count() == 4
            _fits(page)
            if it:
                assert _english_on(page) == []
    finally:
        context.close()
