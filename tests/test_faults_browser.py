"""Fault reports in Debian's headless Chromium (issue 12, items 3-5): an anonymous visitor reports a fault from a
phone (390×844), staff see it on the dashboard (1366×900) with the machine's tile "out of order", close it in the
portal and confirm a check after use on a phone, and print the sticker's SVG QR code; in English and Italian, nothing
wider than the screen, no English on an Italian page.

A failing check keeps a screenshot in var/test-artifacts/screenshots/ (``faults-*-FAILED.png``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from playwright.sync_api import Browser, BrowserContext, Page

from machines.models import FaultReport, Machine, MachineCheck, MachineType, Refusal, Use
from members.models import Member, Role

from .browser import allow_async_unsafe, chromium, daphne, log_in, restore_async_unsafe, screenshot, server_env
from .test_portal_look import _english_on, _fits

pytestmark = pytest.mark.browser

PASSWORD = "a-long-faults-test-password-9"
PHONE = (390, 844)
DESKTOP = (1366, 900)
LANGUAGES = ("en", "it")


@dataclass
class World:
    url: str
    browser: Browser
    cookies: list
    machine: Machine


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker) -> Iterator[World]:
    allow_async = allow_async_unsafe()
    with django_db_blocker.unblock():
        admins, _ = Role.objects.get_or_create(name="ADMIN", defaults={"authorize_all": True, "maintenance": True})
        kind = MachineType.objects.create(name="Lasers", check_after_use=True)
        machine = Machine.objects.create(id=1, name="LASER 1", type=kind, last_seen=timezone.now())
        Machine.objects.create(id=2, name="PRINTER 1", type=kind, last_seen=timezone.now())
        Member.objects.create_superuser(email="desk@lab.test", password=PASSWORD, first_name="Desk", role=admins)
        env = server_env(connection.settings_dict["NAME"], redis_url="")
    try:
        with daphne(env) as web, chromium() as browser:
            context = browser.new_context()
            log_in(context.new_page(), web.url, "desk@lab.test", PASSWORD)
            cookies = context.cookies()
            context.close()
            yield World(url=web.url, browser=browser, cookies=cookies, machine=machine)
    finally:
        with django_db_blocker.unblock():
            call_command("flush", interactive=False, verbosity=0)
        restore_async_unsafe(allow_async)


@pytest.fixture(autouse=True)
def db(django_db_blocker) -> Iterator[None]:
    """Committed data the server sees, as in test_portal_look.py."""
    with django_db_blocker.unblock():
        yield


def _context(world: World, size: tuple[int, int], language: str, *, staff: bool) -> BrowserContext:
    phone = size == PHONE
    context = world.browser.new_context(
        viewport={"width": size[0], "height": size[1]}, is_mobile=phone, has_touch=phone
    )
    if staff:
        context.add_cookies(world.cookies)
    context.add_cookies([{"name": settings.LANGUAGE_COOKIE_NAME, "value": language, "url": world.url}])
    return context


@contextmanager
def _shot(page: Page, name: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        screenshot(page, f"faults-{name}-FAILED")
        raise
    screenshot(page, f"faults-{name}")


def _check(page: Page, language: str) -> None:
    _fits(page)
    if language == "it":
        assert _english_on(page) == []


def _open(page: Page, url: str) -> None:
    response = page.goto(url)
    assert response is not None and response.ok, url
    page.wait_for_load_state("load")


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_visitor_reports_from_a_phone_and_staff_see_it_on_the_dashboard(world: World, language: str) -> None:
    FaultReport.objects.all().delete()
    machine = Machine.objects.get(pk=world.machine.pk)
    visitor = _context(world, PHONE, language, staff=False)
    page = visitor.new_page()
    _open(page, f"{world.url}/report/{machine.report_token}/")
    with _shot(page, f"report-phone-{language}"):
        assert page.locator("html").get_attribute("lang") == language
        assert "LASER 1" in page.locator(".fr-machine").inner_text()
        _check(page, language)
        page.fill("textarea[name=description]", f"Smoke from the tube ({language})")
        page.check("input[name=severity][value=out_of_order]")
        page.click("button.fr-submit")
        page.wait_for_url("**/thanks/**")
    with _shot(page, f"thanks-phone-{language}"):
        assert page.locator("h1").inner_text() == ("Grazie" if language == "it" else "Thank you")
        _check(page, language)
    visitor.close()
    fault = FaultReport.objects.get()
    assert fault.severity == FaultReport.Severity.OUT_OF_ORDER and fault.machine_id == machine.pk

    for size, name in ((DESKTOP, "desktop"), (PHONE, "phone")):
        staff = _context(world, size, language, staff=True)
        page = staff.new_page()
        _open(page, f"{world.url}/admin/")
        with _shot(page, f"dashboard-{name}-{language}"):
            tile = page.locator(f'.fab-tile[data-id="{machine.pk}"]')
            assert tile.get_attribute("data-state") == "out_of_order"
            assert tile.locator(".fab-tile-state").inner_text().lower() == (
                "fuori servizio" if language == "it" else "out of order"
            )
            assert f"Smoke from the tube ({language})" in page.locator("#fab-open-faults").inner_text()
            _check(page, language)
        staff.close()


@pytest.mark.parametrize("language", LANGUAGES)
def test_staff_close_a_fault_and_confirm_a_check_on_a_phone(world: World, language: str) -> None:
    FaultReport.objects.all().delete()
    machine = Machine.objects.get(pk=world.machine.pk)
    FaultReport.objects.create(machine=machine, severity=FaultReport.Severity.OUT_OF_ORDER, description="Cracked lens")
    staff = _context(world, PHONE, language, staff=True)
    page = staff.new_page()
    _open(page, f"{world.url}/admin/machines/machine/{machine.pk}/change/")
    with _shot(page, f"machine-phone-{language}"):
        assert "Cracked lens" in page.locator("#machine-faults").inner_text()
        _check(page, language)
        page.click("button[name=close_faults]")
        page.wait_for_selector("textarea[name=note]")
    with _shot(page, f"close-confirm-phone-{language}"):
        _check(page, language)
        page.fill("textarea[name=note]", "New lens fitted")
        page.click("input[type=submit].default")
        page.wait_for_selector("#machine-faults")
    fault = FaultReport.objects.get()
    assert fault.closed_at is not None and fault.close_note == "New lens fitted" and fault.closed_via == "portal"

    now = timezone.now()
    member = Member.objects.get(email="desk@lab.test")
    use = Use.objects.create(member=member, machine=machine, started_at=now, ended_at=now, last_seen=now, duration=5)
    MachineCheck.objects.create(machine=machine, use=use, requested_at=now)
    _open(page, f"{world.url}/admin/machines/machine/{machine.pk}/change/")
    with _shot(page, f"check-phone-{language}"):
        _check(page, language)
        page.click("button[name=confirm_check]")
        page.wait_for_selector("input[type=submit].default")
        _check(page, language)
        page.click("input[type=submit].default")
        page.wait_for_selector("#machine-faults")
    check = MachineCheck.objects.get(use=use)
    assert check.checked_at is not None and check.checked_via == "portal"
    staff.close()


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_sticker_renders_an_svg_qr_code(world: World, language: str) -> None:
    machine = Machine.objects.get(pk=world.machine.pk)
    staff = _context(world, PHONE, language, staff=True)
    page = staff.new_page()
    _open(page, f"{world.url}/admin/machines/machine/{machine.pk}/sticker/")
    with _shot(page, f"sticker-phone-{language}"):
        qr = page.locator(".st-qr svg")
        assert qr.count() == 1 and qr.locator("path").count() >= 1
        box = qr.bounding_box()
        assert box is not None and box["width"] > 150 and abs(box["width"] - box["height"]) < 2
        assert f"/report/{machine.report_token}/" in page.locator(".st-url").inner_text()
        _check(page, language)
    staff.close()


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("size", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_the_lists_fit_and_speak_one_language(world: World, language: str, size: tuple[int, int]) -> None:
    machine = Machine.objects.get(pk=world.machine.pk)
    member = Member.objects.get(email="desk@lab.test")
    if not FaultReport.objects.exists():
        FaultReport.objects.create(machine=machine, severity=FaultReport.Severity.MINOR, description="Loose knob")
    if not MachineCheck.objects.exists():
        MachineCheck.objects.create(machine=machine, requested_at=timezone.now())
    Refusal.objects.create(machine=machine, member=member, uid="aabbccd1", reason=Refusal.Reason.TO_CHECK)
    staff = _context(world, size, language, staff=True)
    page = staff.new_page()
    name = "phone" if size == PHONE else "desktop"
    for model in ("faultreport", "machinecheck", "refusal"):
        _open(page, f"{world.url}/admin/machines/{model}/")
        with _shot(page, f"list-{model}-{name}-{language}"):
            assert page.locator("#result_list tbody tr").count() >= 1
            _check(page, language)
    _open(page, f"{world.url}/admin/members/member/{member.pk}/change/")
    with _shot(page, f"member-{name}-{language}"):
        assert page.locator("#refusals tbody tr").count() >= 1
        _check(page, language)
    staff.close()
