"""Single sign-on (members/sso.py) against a real OpenID provider: django-oidc-provider, run as its own tiny Django
project (tests/oidc_op) in a subprocess on a free port, with its own SQLite file, one client and its users.

Most cases drive the real flow over HTTP: the portal (Django's test client) redirects to the provider, an HTTP client
logs in at the provider's own form and follows its redirects back to the portal's callback, and the portal fetches
the token, the keys and the user's claims from the provider over HTTP. One test does it all in headless Chromium
against the portal served by daphne.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import jwt
import pytest
import requests
from auditlog.models import LogEntry
from axes.models import AccessAttempt
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth import SESSION_KEY
from django.core import mail
from django.core.cache import cache
from django.core.exceptions import SuspiciousOperation
from django.db import connection
from django.test import Client
from pytest_django import Settings

from fabomatic.checks import check_identity_provider
from members.models import DEFAULT_ROLE, Member, Role
from members.oidc import MemberOIDCBackend
from members.services import send_password_emails
from operations.audit import english
from tests.oidc_op import serve

from .browser import chromium, daphne, screenshot, server_env
from .services import ROOT, free_port, wait_for_port

PORTAL = "http://testserver"


@dataclass
class Provider:
    url: str

    @property
    def discovery(self) -> str:
        return f"{self.url}/openid/.well-known/openid-configuration"


def _start_provider(tmp: Path, port: int, redirect_uris: list[str]) -> subprocess.Popen:
    env = {
        **os.environ,
        "OIDC_OP_DATABASE": str(tmp / "op.sqlite3"),
        "OIDC_OP_URL": f"http://127.0.0.1:{port}",
        "DJANGO_SETTINGS_MODULE": "tests.oidc_op.settings",
    }
    log = (tmp / "op.log").open("wb")
    args = [sys.executable, "-m", "tests.oidc_op.serve", str(port), *redirect_uris]
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=60)
    except Exception:
        process.kill()
        raise AssertionError((tmp / "op.log").read_text()) from None
    return process


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    port = free_port()
    process = _start_provider(tmp_path_factory.mktemp("op"), port, [f"{PORTAL}/oidc/callback/", f"{PORTAL}/logged-out"])
    yield Provider(url=f"http://127.0.0.1:{port}")
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def sso(settings: Settings, provider: Provider, db: None) -> Provider:
    settings.OIDC_ENABLED = True
    settings.OIDC_PROVIDER_NAME = "Lab ID"
    settings.OIDC_RP_CLIENT_ID = serve.CLIENT_ID
    settings.OIDC_RP_CLIENT_SECRET = serve.CLIENT_SECRET
    settings.OIDC_OP_DISCOVERY_URL = provider.discovery
    settings.OIDC_LOGOUT_REDIRECT_URL = f"{PORTAL}/logged-out"
    Role.objects.get_or_create(name=DEFAULT_ROLE)
    cache.clear()
    return provider


def _member(email: str, **extra: Any) -> Member:
    role = Role.objects.get_or_create(name=DEFAULT_ROLE)[0]
    extra.setdefault("is_staff", True)
    return Member.objects.create_user(email=email, first_name=email.split("@")[0], role=role, **extra)


def _log_in_at_provider(client: Client, username: str, *, next_url: str = "") -> str:
    """The whole flow: portal → provider's login form → back to the portal's callback. Returns where the portal
    sent the browser after the callback."""
    start = client.get("/oidc/authenticate/" + (f"?next={next_url}" if next_url else ""))
    assert start.status_code == 302
    query = parse_qs(urlsplit(start["Location"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]  # PKCE
    assert query["scope"] == ["openid email profile"] and query["nonce"][0] and query["state"][0]
    browser = requests.Session()
    url = start["Location"]
    for _hop in range(10):
        if url.startswith(PORTAL):
            callback = client.get(url.removeprefix(PORTAL))
            assert callback.status_code == 302
            return callback["Location"]
        answer = browser.get(url, allow_redirects=False, timeout=10)
        if answer.status_code == 200 and 'id="op-login"' in answer.text:
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', answer.text)
            assert token is not None
            form = {"username": username, "password": serve.PASSWORD, "csrfmiddlewaretoken": token.group(1)}
            form["next"] = html.unescape(re.search(r'name="next" value="([^"]*)"', answer.text).group(1))  # type: ignore[union-attr]
            answer = browser.post(url, data=form, headers={"Referer": url}, allow_redirects=False, timeout=10)
        assert answer.status_code == 302, answer.text[:500]
        url = urljoin(url, answer.headers["Location"])
    raise AssertionError("the provider never sent the browser back")


def _audit() -> list[str]:
    return [english(e) for e in LogEntry.objects.filter(action=LogEntry.Action.ACCESS).order_by("timestamp", "pk")]


def _logged_in(client: Client) -> int | None:
    value = client.session.get(SESSION_KEY)
    return int(value) if value is not None else None


def _login_page(client: Client) -> str:
    return client.get("/admin/login/").content.decode()


def test_sso_is_off_by_default(client: Client, db: None) -> None:
    assert client.get("/oidc/authenticate/").status_code == 404
    assert client.get("/oidc/callback/?code=x&state=y").status_code == 404
    page = _login_page(client)
    assert 'id="sso-login"' not in page and 'id="login-form"' in page


def test_a_staff_member_logs_in_by_verified_email_whatever_its_case(client: Client, sso: Provider) -> None:
    staff = _member("staff.member@lab.test")
    page = _login_page(client)
    assert "Log in with Lab ID" in page and 'id="login-form"' in page  # the password form stays as a fallback
    italian = Client(headers={"accept-language": "it"})
    assert "Accedi con Lab ID" in italian.get("/admin/login/").content.decode()
    landed = _log_in_at_provider(client, "staff", next_url="/admin/machines/machine/")
    assert landed == "/admin/machines/machine/"
    assert _logged_in(client) == staff.pk
    assert client.get("/admin/").status_code == 200
    assert _audit() == ["Logged in with single sign-on (Lab ID)"]
    entry = LogEntry.objects.get(action=LogEntry.Action.ACCESS)
    assert entry.object_pk == str(staff.pk) and entry.actor_id == staff.pk
    assert not AccessAttempt.objects.exists()


@pytest.mark.parametrize(
    ("username", "make", "reason"),
    [
        ("disabled", {"disabled": True}, "This member is disabled."),
        ("cardholder", {"is_staff": False}, "This member has no portal access. Ask the lab&#x27;s staff."),
        ("disabled", {"is_active": False}, "This account is closed."),
        ("disabled", {"deleted_at": datetime(2026, 1, 1, tzinfo=UTC)}, "This account is closed."),  # erasure asked
        ("unverified", {}, "The identity provider has not verified your e-mail address."),
    ],
)
def test_members_who_may_not_use_the_portal_are_refused(
    client: Client, sso: Provider, username: str, make: dict, reason: str
) -> None:
    member = _member(serve.USERS[username][0].lower(), **make)
    landed = _log_in_at_provider(client, username)
    assert landed == "/admin/login/"
    assert _logged_in(client) is None
    assert reason in _login_page(client)
    entry = LogEntry.objects.get(action=LogEntry.Action.ACCESS)
    assert entry.object_pk == str(member.pk)
    assert english(entry) == f"Single sign-on refused: {html.unescape(reason)}"


def test_an_unknown_email_is_refused_and_no_account_is_created(client: Client, sso: Provider) -> None:
    members = Member.objects.count()
    assert _log_in_at_provider(client, "nobody") == "/admin/login/"
    assert "No member of the lab has this e-mail address." in _login_page(client)
    assert Member.objects.count() == members and _logged_in(client) is None
    assert _audit() == ["Single sign-on refused for “nobody@lab.test”: No member of the lab has this e-mail address."]
    assert not AccessAttempt.objects.exists()


def test_an_account_created_by_sso_has_no_portal_access(client: Client, sso: Provider, settings: Settings) -> None:
    settings.OIDC_CREATE_USERS = True
    assert _log_in_at_provider(client, "newcomer") == "/admin/login/"
    assert "created without portal access" in _login_page(client)
    created = Member.objects.get(email__iexact="newcomer@lab.test")
    assert (created.first_name, created.last_name) == ("Nico", "Newcomer")
    assert not created.is_staff and not created.is_superuser and not created.has_usable_password()
    assert created.role.name == DEFAULT_ROLE and created.role.grants_nothing
    assert created.get_all_permissions() == set() and _logged_in(client) is None
    assert "Account created by single sign-on" in _audit()
    # Once more: the account exists now, and still may not use the portal.
    assert _log_in_at_provider(client, "newcomer") == "/admin/login/"
    assert Member.objects.filter(email__iexact="newcomer@lab.test").count() == 1
    assert _logged_in(client) is None
    # Staff give it portal access (view only, its role grants nothing more): now it logs in.
    Member.objects.filter(pk=created.pk).update(is_staff=True)
    assert _log_in_at_provider(client, "newcomer") == "/admin/"
    assert _logged_in(client) == created.pk
    permissions = Member.objects.get(pk=created.pk).get_all_permissions()
    assert permissions and all(".view_" in permission for permission in permissions)


def test_a_default_role_that_grants_something_is_never_given_by_sso(
    client: Client, sso: Provider, settings: Settings
) -> None:
    settings.OIDC_CREATE_USERS = True
    Role.objects.filter(name=DEFAULT_ROLE).update(maintenance=True)
    assert _log_in_at_provider(client, "newcomer") == "/admin/login/"
    assert not Member.objects.filter(email__iexact="newcomer@lab.test").exists()


def test_a_callback_is_used_once(client: Client, sso: Provider) -> None:
    _member("staff.member@lab.test")
    start = client.get("/oidc/authenticate/")
    state = parse_qs(urlsplit(start["Location"]).query)["state"][0]
    forged = client.get(f"/oidc/callback/?code=forged&state={state}")
    assert forged["Location"] == "/admin/login/" and _logged_in(client) is None
    assert "could not be verified" in _login_page(client)
    again = client.get(f"/oidc/callback/?code=forged&state={state}")  # the state was spent
    assert again["Location"] == "/admin/login/"
    assert "This login link has expired" in _login_page(client)
    assert client.get("/oidc/callback/?error=access_denied")["Location"] == "/admin/login/"


def test_sso_failures_never_lock_out_the_password_form(
    client: Client, sso: Provider, settings: Settings, fast_passwords: None
) -> None:
    staff = _member("staff.member@lab.test")
    staff.set_password("correct-horse-battery-9")
    staff.save()
    for _attempt in range(settings.AXES_FAILURE_LIMIT + 1):
        client.get("/oidc/callback/?code=x&state=nothing")
    assert not AccessAttempt.objects.exists()
    answer = client.post("/admin/login/", {"username": staff.email, "password": "correct-horse-battery-9"})
    assert answer.status_code == 302 and _logged_in(client) == staff.pk


def test_a_session_ends_when_portal_access_is_taken_away(client: Client, sso: Provider) -> None:
    staff = _member("staff.member@lab.test")
    _log_in_at_provider(client, "staff")
    assert client.get("/admin/").status_code == 200
    Member.objects.filter(pk=staff.pk).update(disabled=True)
    assert client.get("/admin/")["Location"].startswith("/admin/login/")


def test_logout_ends_the_local_session_and_the_providers(client: Client, sso: Provider) -> None:
    _member("staff.member@lab.test")
    _log_in_at_provider(client, "staff")
    answer = client.post("/admin/logout/")
    assert answer.status_code == 302
    end = urlsplit(answer["Location"])
    assert f"{end.scheme}://{end.netloc}{end.path}" == f"{sso.url}/openid/end-session"
    query = parse_qs(end.query)
    assert query["post_logout_redirect_uri"] == [f"{PORTAL}/logged-out"] and query["id_token_hint"][0]
    assert _logged_in(client) is None
    # The provider accepts the hint and sends the browser back to the portal.
    back = requests.get(answer["Location"], allow_redirects=False, timeout=10)
    assert back.status_code == 302 and back.headers["Location"].startswith(f"{PORTAL}/logged-out")


def test_without_password_login_only_superusers_may_use_a_password(
    client: Client, sso: Provider, settings: Settings, fast_passwords: None
) -> None:
    settings.OIDC_PASSWORD_LOGIN = False
    staff = _member("staff.member@lab.test")
    root = Member.objects.create_superuser(email="root@lab.test", password="correct-horse-battery-9", first_name="R")
    staff.set_password("correct-horse-battery-9")
    staff.save()
    page = _login_page(client)
    assert 'id="sso-login"' in page and 'id="login-form"' not in page and "password_reset" not in page
    assert 'id="login-form"' in client.get("/admin/login/?password=1").content.decode()
    refused = client.post("/admin/login/?password=1", {"username": staff.email, "password": "correct-horse-battery-9"})
    assert refused.status_code == 200 and _logged_in(client) is None
    assert AccessAttempt.objects.filter(username=staff.email).exists()  # axes still guards the password form
    assert _audit() == ["Failed login"]
    answer = client.post("/admin/login/?password=1", {"username": root.email, "password": "correct-horse-battery-9"})
    assert answer.status_code == 302 and _logged_in(client) == root.pk
    # No password e-mails for staff either (the superuser's break-glass still gets one).
    send_password_emails(Member.objects.filter(pk__in=[staff.pk, root.pk]))
    assert [message.to for message in mail.outbox] == [[root.email]]
    # SSO still works for staff.
    other = Client()
    _log_in_at_provider(other, "staff")
    assert _logged_in(other) == staff.pk


def test_an_unreachable_provider_is_said_so_on_the_login_page(
    client: Client, sso: Provider, settings: Settings
) -> None:
    settings.OIDC_OP_DISCOVERY_URL = f"http://127.0.0.1:{free_port()}/.well-known/openid-configuration"
    assert client.get("/oidc/authenticate/")["Location"] == "/admin/login/"
    assert "The identity provider cannot be reached" in _login_page(client)
    assert _audit() == ["Single sign-on refused: The identity provider cannot be reached. Please try again later."]


def test_an_id_token_for_another_client_or_with_another_algorithm_is_refused(settings: Settings) -> None:
    settings.OIDC_ENABLED = True
    settings.OIDC_RP_CLIENT_ID = "fabomatic"
    settings.OIDC_OP_ISSUER = "https://id.lab.test"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"iss": "https://id.lab.test", "sub": "1", "aud": "fabomatic", "iat": 1, "exp": 4102444800}
    backend = MemberOIDCBackend()
    assert backend._verify_jws(jwt.encode(claims, key, algorithm="RS256"), key.public_key())["sub"] == "1"
    with pytest.raises(jwt.InvalidAudienceError):
        backend._verify_jws(jwt.encode({**claims, "aud": "another-app"}, key, algorithm="RS256"), key.public_key())
    with pytest.raises(jwt.InvalidIssuerError):
        forged = jwt.encode({**claims, "iss": "https://evil.test"}, key, algorithm="RS256")
        backend._verify_jws(forged, key.public_key())
    with pytest.raises(jwt.ExpiredSignatureError):
        backend._verify_jws(jwt.encode({**claims, "exp": 2}, key, algorithm="RS256"), key.public_key())
    with pytest.raises(SuspiciousOperation):  # signed with the client secret instead of the provider's key
        backend._verify_jws(jwt.encode(claims, "a-shared-secret-of-32-bytes-or-more!", algorithm="HS256"), "x")


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"OIDC_RP_CLIENT_ID": ""}, "OIDC_ENABLED needs OIDC_RP_CLIENT_ID and OIDC_RP_CLIENT_SECRET"),
        ({"OIDC_OP_DISCOVERY_URL": ""}, "OIDC_ENABLED needs OIDC_OP_DISCOVERY_URL, or"),
    ],
)
def test_the_portal_refuses_to_start_with_half_a_configuration(env: dict[str, str], error: str) -> None:
    full = {"OIDC_ENABLED": "1", "OIDC_RP_CLIENT_ID": "c", "OIDC_RP_CLIENT_SECRET": "s"}
    full["OIDC_OP_DISCOVERY_URL"] = "https://id.lab.test/.well-known/openid-configuration"
    command = [sys.executable, "-c", "import django; django.setup()"]
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "fabomatic.settings", **full}
    assert subprocess.run(command, cwd=ROOT, env=environment, capture_output=True).returncode == 0
    broken = subprocess.run(command, cwd=ROOT, env={**environment, **env}, capture_output=True, text=True)
    assert broken.returncode != 0 and error in broken.stderr


def test_check_deploy_warns_about_a_provider_over_plain_http(settings: Settings) -> None:
    settings.OIDC_ENABLED = True
    settings.OIDC_OP_DISCOVERY_URL = "https://id.lab.test/.well-known/openid-configuration"
    assert check_identity_provider() == []
    settings.OIDC_OP_DISCOVERY_URL = "http://id.lab.test/.well-known/openid-configuration"
    assert [warning.id for warning in check_identity_provider()] == ["fabomatic.W020"]
    settings.OIDC_ENABLED = False
    assert check_identity_provider() == []


@pytest.mark.browser
def test_the_sso_button_logs_a_member_in_and_out_from_a_phone(transactional_db: None, tmp_path: Path) -> None:
    """Headless Chromium at 390 px: the portal's login page, its SSO button, the provider's form, the dashboard; then
    the logout, through the provider's end of session (the portal's CSP must let the logout form go there) and back."""
    op_port, web_port = free_port(), free_port()
    web_url = f"http://127.0.0.1:{web_port}"
    _member("staff.member@lab.test", last_name="Staff")
    env = server_env(connection.settings_dict["NAME"], redis_url="")
    env.update(
        PUBLIC_URL=web_url,
        OIDC_ENABLED="1",
        OIDC_PROVIDER_NAME="Lab ID",
        OIDC_RP_CLIENT_ID=serve.CLIENT_ID,
        OIDC_RP_CLIENT_SECRET=serve.CLIENT_SECRET,
        OIDC_OP_DISCOVERY_URL=f"http://127.0.0.1:{op_port}/openid/.well-known/openid-configuration",
    )
    provider = _start_provider(tmp_path, op_port, [f"{web_url}/oidc/callback/", f"{web_url}/admin/login/"])
    try:
        with daphne(env, port=web_port) as web, chromium() as browser:
            phone = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
            italian = browser.new_context(**phone, locale="it-IT")  # type: ignore[arg-type]
            page = italian.new_page()
            page.goto(f"{web.url}/admin/login/")
            assert page.locator("#sso-login").inner_text().strip() == "Accedi con Lab ID"
            assert "oppure con la tua password" in page.content()
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            screenshot(page, "sso-login-phone-it")
            italian.close()
            context = browser.new_context(**phone)  # type: ignore[arg-type]
            page = context.new_page()
            page.goto(f"{web.url}/admin/login/?next=/admin/")
            button = page.locator("#sso-login")
            assert button.inner_text().strip() == "Log in with Lab ID"
            box = button.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            screenshot(page, "sso-login-phone")
            button.click()
            page.wait_for_url(re.compile(rf"http://127\.0\.0\.1:{op_port}/accounts/login/.*"))
            page.fill("#op-username", "staff")
            page.fill("#op-password", serve.PASSWORD)
            page.click("#op-submit")
            page.wait_for_url(f"{web.url}/admin/")
            assert "staff.member" in page.content()  # the dashboard greets the member
            page.locator("#logout-form").evaluate("form => form.requestSubmit()")
            page.wait_for_url(f"{web.url}/admin/login/")
            page.locator("#sso-login").click()  # the provider's session ended too: it asks again
            page.wait_for_url(re.compile(rf"http://127\.0\.0\.1:{op_port}/accounts/login/.*"))
            context.close()
    finally:
        provider.terminate()
        provider.wait(timeout=10)
    assert _audit() == ["Logged in with single sign-on (Lab ID)"]
