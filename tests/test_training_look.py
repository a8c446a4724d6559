"""The training pages on a trainer's phone (390×844), in English and Italian, in Debian's headless Chromium: the
sign-off page arms a machine and shows the trainee of the next swipe (made in this process, as the bridge does),
the member page shows expired and expiring trainings, and the bulk renewal is confirmed. Nothing is wider than the
screen, and an Italian page holds no English string.

A failing check keeps a screenshot in var/test-artifacts/screenshots/ (``training-*-FAILED.png``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from playwright.sync_api import Browser, Page, ViewportSize, expect

from machines import safety
from machines.models import Authorization, Machine, MachineType
from members.models import Card, Member, Role

from .browser import allow_async_unsafe, chromium, daphne, log_in, restore_async_unsafe, screenshot, server_env
from .test_portal_look import _english_on, _fits, _open

pytestmark = pytest.mark.browser

PASSWORD = "a-long-training-test-password-7"
PHONE: ViewportSize = {"width": 390, "height": 844}


@dataclass
class World:
    url: str
    browser: Browser
    cookies: list
    laser: Machine
    nina: Member  # her laser training expired
    ugo: Member  # his laser training expires in a week
    tea: Member  # the trainee: no authorization


def _lab() -> dict:
    user, _ = Role.objects.get_or_create(name="USER")
    admins, _ = Role.objects.get_or_create(name="ADMIN", defaults={"authorize_all": True, "maintenance": True})
    lasers = MachineType.objects.create(name="Lasers", training_expiry="after_days", training_days=365)
    laser = Machine.objects.create(id=1, name="LASER 1", type=lasers, last_seen=timezone.now())
    desk = Member.objects.create_superuser(email="desk@lab.test", password=PASSWORD, first_name="Desk", role=admins)

    def member(name: str, uid: str) -> Member:
        m = Member.objects.create_user(email=f"{name.lower()}@lab.test", first_name=name, last_name="Rossi", role=user)
        Card.objects.create(uid=uid, member=m)
        return m

    nina, ugo, tea = member("Nina", "aabbccd3"), member("Ugo", "aabbccd4"), member("Tea", "aabbccd5")
    now = timezone.now()
    safety.grant(nina, laser, by=desk, now=now - timedelta(days=400))
    safety.grant(ugo, laser, by=desk, now=now - timedelta(days=358))
    return {"laser": laser, "nina": nina, "ugo": ugo, "tea": tea}


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker) -> Iterator[World]:
    allow_async = allow_async_unsafe()
    with django_db_blocker.unblock():
        data = _lab()
        env = server_env(connection.settings_dict["NAME"], redis_url="")
    try:
        with daphne(env) as web, chromium() as browser:
            context = browser.new_context()
            page = context.new_page()
            log_in(page, web.url, "desk@lab.test", PASSWORD)
            cookies = context.cookies()
            context.close()
            yield World(url=web.url, browser=browser, cookies=cookies, **data)
    finally:
        with django_db_blocker.unblock():
            call_command("flush", interactive=False, verbosity=0)
        restore_async_unsafe(allow_async)


@pytest.fixture(autouse=True)
def db(django_db_blocker) -> Iterator[None]:
    """Committed data the server sees, as in test_portal_look.py."""
    with django_db_blocker.unblock():
        yield


@pytest.fixture(params=["en", "it"])
def page(request, world: World) -> Iterator[Page]:
    """A logged-in phone in one language."""
    context = world.browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    context.add_cookies(world.cookies)
    context.add_cookies([{"name": settings.LANGUAGE_COOKIE_NAME, "value": request.param, "url": world.url}])
    the_page = context.new_page()
    the_page.language = request.param  # type: ignore[attr-defined]
    yield the_page
    context.close()


@contextmanager
def _shot(page: Page, name: str) -> Iterator[None]:
    tag = f"training-{name}-phone-{page.language}"  # type: ignore[attr-defined]
    try:
        yield
    except BaseException:
        screenshot(page, f"{tag}-FAILED")
        raise
    screenshot(page, tag)


def _one_language(page: Page) -> None:
    _fits(page)
    if page.language == "it":  # type: ignore[attr-defined]
        assert _english_on(page) == []


def test_the_sign_off_page_arms_and_shows_the_trainee(world: World, page: Page) -> None:
    it = page.language == "it"  # type: ignore[attr-defined]
    Authorization.objects.filter(member=world.tea).delete()
    _open(page, f"{world.url}/admin/")
    page.locator("nav.fab-nav a", has_text="Abilita un allievo" if it else "Sign off a trainee").click()
    page.wait_for_load_state("load")
    with _shot(page, "sign-off-choose"):
        _one_language(page)
    page.select_option("#id_machine", str(world.laser.pk))
    page.locator(".fab-sign-off-choose button").click()
    page.wait_for_load_state("load")
    page.locator("#fab-arm").click()
    page.wait_for_load_state("load")
    box = page.locator("#fab-signoff")
    with _shot(page, "sign-off-armed"):
        expect(box).to_have_attribute("data-state", "armed")
        countdown = page.locator("[data-fab-countdown]")
        expect(countdown).to_have_text(re.compile(r"^\d+ s$"))
        assert 50 <= int(countdown.inner_text().split()[0]) <= 60
        expect(page.locator("#fab-disarm")).to_be_visible()
        _one_language(page)

    granted = safety.sign_off(world.laser, world.tea)  # the trainee swipes: the bridge's refused-swipe path
    assert granted is not None and granted.trained_by is not None and granted.trained_by.email == "desk@lab.test"
    with _shot(page, "sign-off-trained"):
        expect(box).to_have_attribute("data-state", "trained", timeout=5000)
        message = page.locator("[data-fab-message]")
        expect(message).to_contain_text("Tea Rossi")
        expect(message).to_contain_text("abilitazione registrata" if it else "was trained by")
        expect(page.locator("#fab-disarm")).to_be_hidden()
        _one_language(page)


def test_the_disarm_button_ends_the_arming(world: World, page: Page) -> None:
    _open(page, f"{world.url}/admin/sign-off/?machine={world.laser.pk}")
    page.locator("#fab-arm").click()
    page.wait_for_load_state("load")
    page.locator("#fab-disarm").click()
    page.wait_for_load_state("load")
    with _shot(page, "sign-off-disarmed"):
        expect(page.locator("#fab-signoff")).to_have_attribute("data-state", "ended")
        assert safety.active_arm(world.laser.pk) is None
        _one_language(page)


def test_the_member_page_shows_expired_and_expiring_trainings(world: World, page: Page) -> None:
    it = page.language == "it"  # type: ignore[attr-defined]
    _open(page, f"{world.url}/admin/members/member/{world.nina.pk}/change/")
    with _shot(page, "member-expired"):
        panel = page.locator("#training-due")
        expect(panel.locator(".fab-badge-error")).to_have_text("scaduta" if it else "expired")
        expect(panel).to_contain_text("LASER 1")
        inline = page.locator("#authorizations-group")
        expect(inline).to_contain_text("Desk")  # trained by
        _one_language(page)
    _open(page, f"{world.url}/admin/machines/machine/{world.laser.pk}/change/")
    with _shot(page, "machine-expiring"):
        panel = page.locator("#training-due")
        expect(panel.locator(".fab-badge-warn")).to_have_text("in scadenza" if it else "expiring soon")
        expect(panel).to_contain_text("Ugo Rossi")
        _one_language(page)


def test_bulk_renewal_is_confirmed_first(world: World, page: Page) -> None:
    it = page.language == "it"  # type: ignore[attr-defined]
    _open(page, f"{world.url}/admin/machines/authorization/?training=expired")
    with _shot(page, "renew-list"):
        expect(page.locator("#result_list tbody tr")).to_have_count(1)
        _one_language(page)
    page.locator("#result_list tbody input.action-select").check()
    page.select_option("select[name=action]", "renew_selected")
    page.locator("button[name=index]").click()
    page.wait_for_load_state("load")
    with _shot(page, "renew-confirm"):
        expect(page.locator("#content-main")).to_contain_text("Nina Rossi")
        confirm = page.locator("input[type=submit]")
        expect(confirm).to_have_value("Sì, rinnovale" if it else "Yes, renew them")
        _one_language(page)
    confirm.click()
    page.wait_for_load_state("load")
    with _shot(page, "renew-done"):
        expect(page.locator(".messagelist")).to_contain_text("1")
        renewed = Authorization.objects.get(member=world.nina, machine=world.laser)
        assert not renewed.is_expired() and renewed.trained_by is not None
        _one_language(page)
    # Expired again for the other language's run.
    Authorization.objects.filter(pk=renewed.pk).update(expires_at=timezone.now() - timedelta(days=1))
