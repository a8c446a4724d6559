"""How the portal looks, in Debian's headless Chromium: at a laptop's 1366×900 and a phone's 390×844, in English
and Italian. Nothing may be wider than the screen, an Italian page may hold no English string of the portal or of
its libraries, and the findings of issue 11 (navigation, dashboard, layout, wording, export) stay fixed.

A failing check keeps a screenshot in var/test-artifacts/screenshots/ (``look-*-FAILED.png``); passing ones leave
theirs too, for a person to look at.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from io import BytesIO
from pathlib import Path

import django
import openpyxl
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from playwright.sync_api import Browser, Page

from machines.models import Authorization, Intervention, Machine, MachineType, MaintenancePlan, Use
from members.models import Card, Member, Role, UnknownCard
from telemetry.models import Board

from .browser import allow_async_unsafe, chromium, daphne, log_in, restore_async_unsafe, screenshot, server_env
from .services import ROOT
from .test_i18n import read_po

pytestmark = pytest.mark.browser

PASSWORD = "a-long-look-test-password-9"
FIRMWARE = "hardware-rev0-it_IT,v1.0.4"
VIEWPORTS = {"desktop": (1366, 900), "phone": (390, 844)}
LANGUAGES = ("en", "it")


@dataclass
class World:
    url: str
    browser: Browser
    cookies: list
    machine: Machine
    member: Member


def _lab() -> dict:
    user, _ = Role.objects.get_or_create(name="USER")
    admins, _ = Role.objects.get_or_create(name="ADMIN", defaults={"authorize_all": True, "maintenance": True})
    lasers = MachineType.objects.create(name="Lasers", requires_authorization=True)
    printers = MachineType.objects.create(name="Printers", requires_authorization=False)
    now = timezone.now()
    laser = Machine.objects.create(id=1, name="LASER 1", type=lasers, hours=12.5, last_seen=now)
    printer = Machine.objects.create(id=2, name="PRINTER 1", type=printers, hours=200, last_seen=now)
    Machine.objects.create(id=3, name="CNC MILL", type=printers, blocked=True, last_seen=now)
    Machine.objects.create(id=4, name="LATHE", type=printers, last_seen=now - timedelta(days=2))
    Machine.objects.create(id=5, name="DRILL", type=printers, last_seen=now)  # two free machines: a plural
    for machine in (laser, printer):
        Board.objects.create(machine=machine, ip_address=f"192.168.1.{machine.pk + 40}", firmware=FIRMWARE)
    # Overdue by a quarter of an hour: the badge must not round it to "0/0 h".
    MaintenancePlan.objects.create(machine=printer, hours_between=0.25, description="New nozzle", lcd_message="nozzle")
    MaintenancePlan.objects.create(machine=laser, hours_between=200, description="Clean the lens", lcd_message="lens")
    Member.objects.create_superuser(email="desk@lab.test", password=PASSWORD, first_name="Desk", role=admins)
    nina = Member.objects.create_user(email="nina@lab.test", first_name="Nina", last_name="Rossi", role=user)
    Card.objects.create(uid="aabbccd3", member=nina)
    Authorization.objects.create(member=nina, machine=laser)
    for i in range(3):
        start = now - timedelta(days=i + 1)
        Use.objects.create(
            member=nina, machine=laser, started_at=start, ended_at=start + timedelta(minutes=30),
            last_seen=start + timedelta(minutes=30), duration=1800,
        )  # fmt: skip
    Intervention.objects.create(
        machine=laser, member=nina, plan=laser.plans.get(), performed_at=now, machine_hours=12.5
    )
    UnknownCard.objects.create(uid="deadbeef", machine=printer, seen_at=now)
    return {"machine": laser, "member": nina}


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
    """Committed data the server sees, as in test_browser.py."""
    with django_db_blocker.unblock():
        yield


@pytest.fixture(params=[(v, lang) for v in VIEWPORTS for lang in LANGUAGES], ids=lambda p: f"{p[0]}-{p[1]}")
def page(request, world: World) -> Iterator[Page]:
    """A logged-in page at one viewport, in one language; a screenshot is kept if the test fails."""
    viewport, language = request.param
    width, height = VIEWPORTS[viewport]
    phone = viewport == "phone"
    context = world.browser.new_context(
        viewport={"width": width, "height": height}, is_mobile=phone, has_touch=phone, accept_downloads=True
    )
    context.add_cookies(world.cookies)
    context.add_cookies([{"name": settings.LANGUAGE_COOKIE_NAME, "value": language, "url": world.url}])
    the_page = context.new_page()
    the_page.look_name = f"page-{viewport}-{language}"  # type: ignore[attr-defined]
    the_page.language = language  # type: ignore[attr-defined]
    yield the_page
    context.close()


@contextmanager
def _shot(page: Page, name: str) -> Iterator[None]:
    """Keep a screenshot of the page: ``look-<name>-<viewport>-<language>.png``, ``…-FAILED.png`` on failure."""
    tag = f"look-{name}-{page.look_name.split('-', 1)[1]}"  # type: ignore[attr-defined]
    try:
        yield
    except BaseException:
        screenshot(page, f"{tag}-FAILED")
        raise
    screenshot(page, tag)


def _pages(world: World) -> dict[str, str]:
    return {
        "dashboard": "/admin/",
        "members": "/admin/members/member/",
        "member": f"/admin/members/member/{world.member.pk}/change/",
        "machines": "/admin/machines/machine/",
        "machine": f"/admin/machines/machine/{world.machine.pk}/change/",
        "uses": "/admin/machines/use/",
        "interventions": "/admin/machines/intervention/",
        "system": "/admin/system/",
        "password": f"/admin/members/member/{world.member.pk}/password/",
        "axes": "/admin/axes/accessattempt/",
    }


def _open(page: Page, url: str) -> None:
    response = page.goto(url)
    assert response is not None and response.ok, url
    page.wait_for_load_state("load")


def _english_strings() -> set[str]:
    """The English msgids of the portal's and its libraries' catalogs, in lower case, whole phrases only.

    Taken from the English catalogs (they list every msgid, also those the Italian ones lack, such as Django 5.1's
    password page), axes' (it has no Italian) and the project's; a phrase the project deliberately keeps the same
    in Italian is left out.
    """
    site = Path(django.__file__).parent.parent  # site-packages, where Django and the libraries are
    project = read_po(ROOT / "locale/it/LC_MESSAGES/django.po")
    same = {e.msgid for e in project if e.msgstr == e.msgid}
    catalogs = [project]
    for app in ("django/contrib/admin", "django/contrib/auth"):
        catalogs += [read_po(p) for p in (site / app / "locale/en/LC_MESSAGES").glob("django*.po")]
    catalogs.append(read_po(site / "import_export/locale/it/LC_MESSAGES/django.po"))
    catalogs.append(read_po(site / "axes/locale/de/LC_MESSAGES/django.po"))
    strings = set()
    for catalog in catalogs:
        for entry in catalog:
            text = entry.msgid.strip()
            # Whole phrases only: a single word ("Name", "Email", "Online") may be the same in both languages.
            if text not in same and " " in text and "%" not in text and "{" not in text and "<" not in text:
                strings.add(text.lower())
    return strings


ENGLISH = None


def _english_on(page: Page) -> list[str]:
    global ENGLISH
    ENGLISH = ENGLISH or _english_strings()
    texts = page.evaluate(
        """() => {
          const out = [];
          const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
          while (walker.nextNode()) {
            const node = walker.currentNode, el = node.parentElement;
            if (!el || el.closest('script,style,template,[hidden]')) continue;
            const t = node.textContent.replace(/\\s+/g, ' ').trim();
            if (t) out.push(t);
          }
          for (const el of document.querySelectorAll('[title],[placeholder],input[type=submit],[aria-label]')) {
            for (const a of ['title', 'placeholder', 'value', 'aria-label']) {
              const v = el.getAttribute(a); if (v && (a !== 'value' || el.type === 'submit')) out.push(v.trim());
            }
          }
          return out;
        }"""
    )
    found = set()
    for text in texts:
        lower = text.lower()
        if any(phrase in ENGLISH for phrase in (lower, lower.rstrip(":").strip(), lower.rstrip(".").strip())):
            found.add(text)
    return sorted(found)


def _fits(page: Page) -> None:
    # Against the screen's own width: a mobile browser widens window.innerWidth to a page that overflows.
    assert page.viewport_size is not None
    screen = min(page.viewport_size["width"], page.evaluate("window.innerWidth"))
    wide = page.evaluate("document.documentElement.scrollWidth")
    assert wide <= screen, f"{page.url} is {wide} px wide on a {screen} px screen"


@pytest.mark.parametrize(
    "name",
    ["dashboard", "members", "member", "machines", "machine", "uses", "interventions", "system", "password", "axes"],
)
def test_each_page_fits_the_screen_and_speaks_one_language(world: World, page: Page, name: str) -> None:
    _open(page, world.url + _pages(world)[name])
    with _shot(page, name):
        _fits(page)
        if page.language == "it":  # type: ignore[attr-defined]
            assert _english_on(page) == []


def test_words_and_numbers_read_right(world: World, page: Page) -> None:
    it = page.language == "it"  # type: ignore[attr-defined]
    _open(page, world.url + _pages(world)["machines"])
    with _shot(page, "words-machines"):
        # 0.25 h overdue is 0:15, never "0/0 h"; a blocked machine says so, in red.
        assert "nozzle 200:00/0:15" in page.locator("#result_list").inner_text()
        blocked = page.locator("#result_list tr", has_text="CNC MILL").locator(".fab-badge-error")
        assert blocked.inner_text().strip().lower() == ("bloccata" if it else "blocked")
        assert page.locator("#result_list img[alt]").count() == 0  # no ✔/✘ icons
    _open(page, world.url + _pages(world)["machine"])
    with _shot(page, "words-machine"):
        text = page.locator("#content").inner_text()
        assert "0 minutes ago" not in text and "0 minuti fa" not in text
        assert re.search(r"\b0\.\d+ h\b|\b\d+[.,]\d h\b", text) is None, "hours as h:mm only"
        assert "Only super users" not in text
        # One date format on a page: no "Nov. 30, 2026" beside "11/30/2026".
        assert re.search(r"[A-Z][a-z]{2}\. \d{1,2}, 20\d\d", text) is None
    _open(page, world.url + _pages(world)["member"])
    with _shot(page, "words-member"):
        assert re.search(r"Last \d+ uses|Ultimi \d+ utilizzi", page.locator("#content").inner_text()) is None
    _open(page, world.url + "/admin/members/member/?q=nina")
    with _shot(page, "words-search"):
        assert " total)" not in page.locator("#toolbar").inner_text()
    _open(page, world.url + "/favicon.ico")


def test_one_click_exports_the_filtered_list(world: World, page: Page) -> None:
    it = page.language == "it"  # type: ignore[attr-defined]
    _open(page, f"{world.url}/admin/machines/use/?machine__id__exact={world.machine.pk}")
    with _shot(page, "export"):
        link = page.locator("a.export_link")
        assert link.is_visible()
        with page.expect_download() as info:
            link.click()
        book = openpyxl.load_workbook(BytesIO(info.value.path().read_bytes()), read_only=True)
        assert book.sheetnames == ["Utilizzi" if it else "Uses"]
        rows = [r for r in book.active.iter_rows(values_only=True) if any(v is not None for v in r)]
        assert ("Macchina" if it else "Machine") in rows[0]
        assert len(rows) - 1 == Use.objects.filter(machine=world.machine).count()


def test_the_unknown_cards_panel_is_clear_of_the_buttons(world: World, page: Page) -> None:
    _open(page, world.url + _pages(world)["members"])
    with _shot(page, "unknown-cards"):
        panel = page.locator(".fab-unknown-cards").bounding_box()
        for button in page.locator(".object-tools a").all():
            box = button.bounding_box()
            assert panel is not None and box is not None
            assert box["y"] + box["height"] <= panel["y"] or box["y"] >= panel["y"] + panel["height"]


def test_italian_agrees_in_gender_and_number(world: World, page: Page) -> None:
    it = page.language == "it"  # type: ignore[attr-defined]
    Machine.objects.filter(pk__in=[1, 5]).update(last_seen=timezone.now())  # online (heard within 90 s) and free
    _open(page, world.url + "/admin/")
    with _shot(page, "grammar-dashboard"):
        free = page.locator('.fab-counter[data-state="free"]')
        assert free.locator(".fab-count").inner_text() == "2"
        assert free.locator(".fab-counter-label").inner_text().strip().lower() == ("libere" if it else "free")
        # Each board's IP and full firmware on the tile itself, not in a tooltip.
        tile = page.locator('.fab-tile[data-id="1"]')
        assert tile.locator(".fab-tile-ip").inner_text() == "192.168.1.41"
        assert tile.locator(".fab-tile-fw").inner_text() == FIRMWARE
        assert tile.locator(".fab-tile-fw").evaluate("e => e.scrollWidth <= e.clientWidth")
        # Staff's work first: members come before Django's groups and axes, which are folded away.
        assert page.locator("details.fab-internals").get_attribute("open") is None
        nav = page.locator("nav.fab-nav a")
        assert nav.count() == 7 and "/admin/system/" in (nav.last.get_attribute("href") or "")
    _open(page, world.url + _pages(world)["member"])
    with _shot(page, "grammar-member"):
        add = page.locator(".add-row a").first.inner_text()
        assert add == ("Aggiungi un'altra tessera" if it else "Add another card")
        text = page.locator("#content").inner_text()
        assert "Superuser status" not in text and "Stato superutente" not in text
        assert "Axes |" not in page.content()
    if it:
        _open(page, world.url + _pages(world)["machines"])
        with _shot(page, "grammar-dates"):
            days = "lunedì|martedì|mercoledì|giovedì|venerdì|sabato|domenica|gennaio|febbraio|marzo|aprile|maggio"
            months = "giugno|luglio|agosto|settembre|ottobre|novembre|dicembre"
            found = re.findall(rf"\b({days}|{months})\b", page.locator("#result_list").inner_text(), re.I)
            assert [w for w in found if w[0].isupper()] == []
