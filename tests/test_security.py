"""Portal security: password reset, login lockout, production checks, role-based staff permissions."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.core import mail
from django.core.cache import cache
from django.test import Client
from pytest_django import Settings

from members import password_reset
from members.models import Member, Role

from .conftest import Lab
from .services import first_group

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery-9"


@pytest.fixture(autouse=True)
def _fresh_rate_limits() -> None:
    cache.clear()


@pytest.fixture(autouse=True)
def _mail_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The portal sends reset mails from a background thread, which cannot see this test's uncommitted rows:
    here they go out at once (tests/test_password_reset_http.py proves the answer does not wait for them)."""
    monkeypatch.setattr(password_reset, "queue_reset_mail", password_reset.send_reset_mail)


@pytest.fixture
def staff(lab: Lab) -> Member:
    member = lab.staff
    member.is_staff = True
    member.set_password(PASSWORD)
    member.save()
    return member


def ask_reset(client: Client, email: str, ip: str = "10.0.0.1"):
    return client.post("/admin/password_reset/", {"email": email}, REMOTE_ADDR=ip)


def test_reset_mail_carries_a_working_link(client: Client, staff: Member) -> None:
    response = ask_reset(client, "sam@lab.test")

    assert response.status_code == 302 and response["Location"] == "/admin/password_reset/done/"
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["sam@lab.test"]
    link = first_group(r"https?://[^/\s]+(/reset/[^/\s]+/[^/\s]+/)", str(mail.outbox[0].body))
    form_page = client.get(link, follow=True)
    assert form_page.status_code == 200 and "new_password1" in form_page.content.decode()
    done = client.post(
        form_page.redirect_chain[-1][0], {"new_password1": "n3w-Passw0rd-xyz", "new_password2": "n3w-Passw0rd-xyz"}
    )
    assert done.status_code == 302 and done["Location"] == "/reset/done/"
    staff.refresh_from_db()
    assert staff.check_password("n3w-Passw0rd-xyz")


def test_reset_never_reveals_whether_an_address_exists(client: Client, staff: Member) -> None:
    known = ask_reset(client, "sam@lab.test")
    unknown = ask_reset(client, "nobody@lab.test")
    card_holder = ask_reset(client, "ugo@lab.test")  # a member without portal access gets no mail either

    assert len(mail.outbox) == 1
    for response in (unknown, card_holder):
        assert (response.status_code, response["Location"]) == (known.status_code, known["Location"])


def test_reset_is_rate_limited_per_address(client: Client, staff: Member) -> None:
    responses = [ask_reset(client, "sam@lab.test", ip=f"10.0.0.{i}") for i in range(password_reset.EMAIL_LIMIT + 2)]

    assert len(mail.outbox) == password_reset.EMAIL_LIMIT
    assert {(r.status_code, r["Location"]) for r in responses} == {(302, "/admin/password_reset/done/")}


def test_reset_is_rate_limited_per_ip(client: Client, staff: Member) -> None:
    for i in range(password_reset.IP_LIMIT):
        ask_reset(client, f"someone{i}@lab.test", ip="10.9.9.9")
    ask_reset(client, "sam@lab.test", ip="10.9.9.9")
    assert mail.outbox == []
    ask_reset(client, "sam@lab.test", ip="10.9.9.10")  # another client is not punished
    assert len(mail.outbox) == 1


def test_login_locks_out_after_repeated_failures(client: Client, staff: Member, settings: Settings) -> None:
    for _ in range(settings.AXES_FAILURE_LIMIT):
        failed = client.post("/admin/login/", {"username": "sam@lab.test", "password": "wrong"})
        assert failed.status_code in (200, 429)
    locked = client.post("/admin/login/?next=/admin/", {"username": "sam@lab.test", "password": PASSWORD})

    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session
    # Another account from the same client is not locked by Sam's failures.
    lab_admin = Member.objects.create_user(
        email="boss@lab.test", password=PASSWORD, first_name="Boss", is_staff=True, is_superuser=True
    )
    ok = client.post("/admin/login/?next=/admin/", {"username": lab_admin.email, "password": PASSWORD})
    assert ok.status_code == 302


def test_the_correct_password_logs_in_before_the_limit(client: Client, staff: Member) -> None:
    client.post("/admin/login/", {"username": "sam@lab.test", "password": "wrong"})
    ok = client.post("/admin/login/?next=/admin/", {"username": "sam@lab.test", "password": PASSWORD})
    assert ok.status_code == 302 and client.session["_auth_user_id"] == str(staff.pk)


@pytest.mark.parametrize("url", ["/admin/", "/admin/members/member/", "/admin/machines/use/", "/admin/system/"])
def test_nothing_is_reachable_without_login(client: Client, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("url", ["/admin/login/", "/admin/password_reset/"])
def test_the_login_and_reset_pages_are_public(client: Client, url: str) -> None:
    assert client.get(url).status_code == 200


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "FABOMATIC_ENV_FILE": "/nonexistent",
        "FABOMATIC_DATA_DIR": str(tmp_path),
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DEBUG": "0",
        "ALLOWED_HOSTS": "fablab.example.org",
        "PUBLIC_URL": "https://fablab.example.org",
        "EMAIL_URL": "smtp+tls://fabomatic:secret@smtp.example.org:587",
    }
    return {**env, **extra}


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def test_check_deploy_is_clean_with_production_settings(tmp_path: Path) -> None:
    result = check_deploy(production_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_warns_about_any_host_and_a_missing_public_url(tmp_path: Path) -> None:
    env = production_env(tmp_path, ALLOWED_HOSTS="*")
    del env["PUBLIC_URL"]
    result = check_deploy(env)
    assert result.returncode != 0
    assert "fabomatic.W001" in result.stderr and "fabomatic.W002" in result.stderr


@pytest.mark.parametrize("email_url", ["consolemail://", None])
def test_check_deploy_warns_when_mail_would_go_to_the_log_or_nowhere(tmp_path: Path, email_url: str | None) -> None:
    env = production_env(tmp_path)
    if email_url:
        env["EMAIL_URL"] = email_url
    else:
        del env["EMAIL_URL"]
    result = check_deploy(env)
    assert result.returncode != 0 and "fabomatic.W003" in result.stderr


def settings_value(env_file: Path, name: str) -> object:
    env = {**os.environ, "FABOMATIC_ENV_FILE": str(env_file)}
    for var in ("ALLOWED_HOSTS", "PUBLIC_URL", "SECRET_KEY"):
        env.pop(var, None)
    code = f"import json; from django.conf import settings; print(json.dumps(settings.{name}))"
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_make_run_writes_this_machines_names_and_public_url_instead_of_any_host(tmp_path: Path) -> None:
    """scripts/env.sh (make run, deploy/install.sh) on a fresh checkout, then on an older .env without the lines."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "env.sh", checkout / "scripts" / "env.sh")
    (checkout / ".venv").symlink_to(ROOT / ".venv")
    env = {**os.environ, "FABOMATIC_ENV_FILE": str(checkout / ".env")}
    env.pop("WEB_PORT", None)
    subprocess.run([str(checkout / "scripts" / "env.sh")], env=env, check=True, capture_output=True)

    written = (checkout / ".env").read_text()
    hosts = first_group(r"^ALLOWED_HOSTS=(.*)$", written, re.M).split(",")
    name = socket.gethostname().split(".")[0]
    assert "*" not in hosts and {"localhost", "127.0.0.1", name, f"{name}.local"} <= set(hosts)
    assert re.search(rf"^PUBLIC_URL=https://{re.escape(name)}\.local:23336$", written, re.M)
    assert oct((checkout / ".env").stat().st_mode & 0o777) == "0o600"
    assert settings_value(checkout / ".env", "ALLOWED_HOSTS") == hosts
    # An older .env (no ALLOWED_HOSTS: "*" was the default) gets the lines; what is there is kept.
    (checkout / ".env").write_text("SECRET_KEY=kept\nPUBLIC_URL=https://lab.example.org\n")
    subprocess.run([str(checkout / "scripts" / "env.sh")], env=env, check=True, capture_output=True)
    upgraded = (checkout / ".env").read_text()
    assert "SECRET_KEY=kept" in upgraded and upgraded.count("PUBLIC_URL=") == 1
    assert re.search(r"^ALLOWED_HOSTS=.*localhost", upgraded, re.M)


def test_without_allowed_hosts_only_local_names_are_accepted(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SECRET_KEY=x\n")
    assert settings_value(env_file, "ALLOWED_HOSTS") == ["localhost", "127.0.0.1", "[::1]"]


def make_staff(role: Role, email: str) -> Member:
    return Member.objects.create_user(email=email, password=PASSWORD, first_name="X", role=role, is_staff=True)


def fresh(member: Member) -> Member:
    return Member.objects.get(pk=member.pk)  # permissions are cached per user object


def test_a_maintenance_role_records_interventions_but_does_not_edit_members(lab: Lab) -> None:
    maintainer = make_staff(Role.objects.get(name="STAFF"), "maint@lab.test")

    assert maintainer.has_perm("machines.add_intervention")
    assert maintainer.has_perm("machines.change_maintenanceplan")
    assert maintainer.has_perm("members.view_member") and maintainer.has_perm("machines.view_use")
    assert not maintainer.has_perm("members.change_member")
    assert not maintainer.has_perm("members.add_card")
    assert not maintainer.has_perm("machines.delete_use")
    assert maintainer.has_module_perms("machines")


def test_other_staff_only_view_and_backend_admins_do_everything(lab: Lab) -> None:
    viewer = make_staff(Role.objects.get(name="USER"), "viewer@lab.test")
    boss = make_staff(Role.objects.create(name="BACKEND", backend_admin=True), "boss@lab.test")

    assert viewer.has_perm("machines.view_machine") and not viewer.has_perm("machines.change_machine")
    assert boss.has_perm("members.delete_member") and boss.has_perm("machines.change_machine")
    # Role permissions are for portal users only, and an erased or disabled login loses them.
    boss.is_staff = False
    boss.save()
    assert not fresh(boss).has_perm("members.view_member")
    viewer.is_active = False
    viewer.save()
    assert not fresh(viewer).has_perm("machines.view_machine")


def test_superusers_keep_everything_whatever_their_role(lab: Lab) -> None:
    root = Member.objects.create_user(
        email="root@lab.test", first_name="R", role=Role.objects.get(name="USER"), is_staff=True, is_superuser=True
    )
    assert root.has_perm("members.change_member") and root.has_perm("axes.delete_accessattempt")


def test_the_maintenance_role_in_the_portal(client: Client, lab: Lab) -> None:
    maintainer = make_staff(Role.objects.get(name="STAFF"), "maint@lab.test")
    client.force_login(maintainer)

    assert client.get("/admin/machines/intervention/add/").status_code == 200
    assert client.get("/admin/members/member/").status_code == 200
    assert client.get("/admin/members/member/add/").status_code == 403
    response = client.post(f"/admin/members/member/{lab.normal.pk}/change/", {"first_name": "Hacked"})
    assert response.status_code == 403
    lab.normal.refresh_from_db()
    assert lab.normal.first_name == "Nina"
