"""The portal as served (daphne, real HTTP, a real Chromium): refused requests log one line, a production install
never writes mail bodies (reset links) into its log, and a Content-Security-Policy the admin and the dashboard live
with."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from django.utils import timezone

from machines.models import Machine, MachineType, Use
from members.models import Card, Member, Role

from .browser import chromium, daphne, log_in, server_env
from .test_password_reset_http import ask_reset, request

if TYPE_CHECKING:
    from playwright.sync_api import Page, Response

pytestmark = pytest.mark.django_db(transaction=True)  # daphne, another process, reads the committed rows
PASSWORD = "a-long-hardening-test-password-9"


def _env(**extra: str) -> dict[str, str]:
    env = server_env(connection.settings_dict["NAME"], redis_url="")
    env["SECRET_KEY"] = django_settings.SECRET_KEY  # sessions made by the test client are valid there
    env.pop("EMAIL_URL", None)
    env.update(extra)
    return env


def _wait_for(predicate: Callable[[], object], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_refused_request_is_one_line_in_the_log(tmp_path: Path) -> None:
    viewer = Member.objects.create_user(
        email="viewer@lab.test",
        password=PASSWORD,
        first_name="View",
        role=Role.objects.create(name="USER"),
        is_staff=True,
    )
    client = Client()
    client.force_login(viewer)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    with daphne(_env(LOG_DIR=str(tmp_path), LOG_LEVEL="INFO")) as server:
        host = f"127.0.0.1:{server.port}"
        for _ in range(3):
            assert request(server, "GET", "/admin/members/member/add/", host=host, cookie=cookie).status == 403
        assert request(server, "GET", "/admin/", host="evil.example").status == 400
        log = tmp_path / "web.log"
        assert _wait_for(lambda: log.exists() and "Invalid HTTP_HOST" in log.read_text()), server.output()
    text = log.read_text()
    assert [line for line in text.splitlines() if "Forbidden" in line] == [
        line for line in text.splitlines() if "Forbidden (Permission denied): /admin/members/member/add/" in line
    ]
    assert text.count("Forbidden (Permission denied)") == 3
    assert "Traceback" not in text and "PermissionDenied" not in text
    assert len(text.splitlines()) == 4, text


def test_without_email_url_production_never_writes_a_reset_link_into_the_log() -> None:
    Member.objects.create_user(email="zoe@lab.test", first_name="Zoe", password=PASSWORD, is_staff=True)
    with daphne(_env(DEBUG="0")) as server:
        answer = ask_reset(server, "zoe@lab.test", host=f"127.0.0.1:{server.port}")
        assert answer.status == 302
        assert _wait_for(lambda: "E-mail not sent" in server.output() or "/reset/" in server.output())
        output = server.output()
    assert "/reset/" not in output and "zoe@lab.test" not in output
    assert "E-mail not sent, EMAIL_URL is not set" in output


# --- Content-Security-Policy in a real browser ---------------------------------------------------------------

COLLECT_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
});
"""


def _goto(page: Page, url: str) -> Response:
    """``page.goto`` for a page load (Playwright answers None only to a navigation within the same document)."""
    response = page.goto(url)
    assert response is not None, url
    return response


class LabRows(TypedDict):
    staff: Member
    nina: Member
    laser: Machine


@pytest.fixture
def lab_rows() -> Iterator[LabRows]:
    role = Role.objects.create(name="ADMIN", authorize_all=True, maintenance=True)
    kind = MachineType.objects.create(name="Lasers", requires_authorization=True)
    laser = Machine.objects.create(id=1, name="LASER 1", type=kind, last_seen=timezone.now())
    Machine.objects.create(id=2, name="PRINTER 1", type=kind)
    staff = Member.objects.create_superuser(email="desk@lab.test", password=PASSWORD, first_name="Desk", role=role)
    nina = Member.objects.create_user(email="nina@lab.test", first_name="Nina", last_name="Rossi", role=role)
    Card.objects.create(uid="aabbccd3", member=nina)
    start = timezone.now() - timedelta(hours=2)
    end = start + timedelta(hours=1)
    Use.objects.create(member=nina, machine=laser, started_at=start, ended_at=end, last_seen=end, duration=3600)
    yield {"staff": staff, "nina": nina, "laser": laser}


@pytest.mark.browser
def test_the_admin_and_the_dashboard_work_under_the_policy_with_no_violation(
    lab_rows: LabRows, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API owns this thread's loop
    nina = lab_rows["nina"]
    pages = [
        "/admin/",
        "/admin/members/member/",
        "/admin/members/member/add/",
        f"/admin/members/member/{nina.pk}/change/",
        f"/admin/members/member/{nina.pk}/report/",
        f"/admin/members/member/{nina.pk}/history/",
        "/admin/members/card/",
        f"/admin/members/member/{nina.pk}/password/",  # the export is a download now, no page
        "/admin/machines/machine/",
        "/admin/machines/machine/1/change/",
        "/admin/machines/use/",
        "/admin/machines/use/add/",
        "/admin/machines/intervention/add/",
        "/admin/system/",
        "/admin/password_change/",
    ]
    with daphne(_env()) as server, chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.add_init_script(COLLECT_VIOLATIONS)
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda m: console.append(m.text) if "Content Security Policy" in m.text else None)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        login = _goto(page, f"{server.url}/admin/login/")
        policy = login.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        log_in(page, server.url, "desk@lab.test", PASSWORD)
        violations: dict[str, list[str]] = {}
        for path in pages:
            response = _goto(page, f"{server.url}{path}")
            assert response.status == 200, path
            assert response.headers["content-security-policy"] == policy
            page.wait_for_load_state("networkidle")
            if path == "/admin/":
                # The dashboard's script runs and its websocket (connect-src 'self') is live.
                page.wait_for_selector('.fab-live[data-live="live"]', timeout=15000)
            found = page.evaluate("window.__csp")
            if found:
                violations[path] = found
        # The drop-down list filter navigates (its handler moved from an inline onchange into portal.js).
        page.goto(f"{server.url}/admin/machines/use/")
        page.select_option("select.fab-autonav >> nth=0", label="LASER 1")
        page.wait_for_url("**machine__id__exact=1**")
        if page.evaluate("window.__csp"):
            violations["autonav"] = page.evaluate("window.__csp")
        context.close()
    assert violations == {} and console == [], (violations, console)
    assert errors == []
