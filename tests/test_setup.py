"""First run: defaults, the first administrator, and a production-grade SQLite."""

from __future__ import annotations

from io import StringIO

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from members.models import ANONYMOUS_ROLE, Member, Role

from .services import first_group


@pytest.mark.django_db
def test_it_creates_the_first_admin_once_with_a_one_time_password(settings):
    out = StringIO()
    call_command("bootstrap", stdout=out)
    text = out.getvalue()
    admin = Member.objects.get(email="admin@test.local")
    assert admin.is_staff and admin.is_superuser
    password = text.split("password:")[1].split()[0]
    assert password != "admin" and len(password) >= 12
    assert admin.check_password(password)
    again = StringIO()
    call_command("bootstrap", stdout=again)
    assert password not in again.getvalue()
    assert Member.objects.filter(is_staff=True).count() == 1
    # Until someone logs in, every start says how to get a new one-time password (make run prints it at the end).
    assert "bootstrap --new-password" in again.getvalue()
    admin.last_login = timezone.now()
    admin.save()
    quiet = StringIO()
    call_command("bootstrap", stdout=quiet)
    assert "--new-password" not in quiet.getvalue()


def one_time_password(text: str) -> str:
    return first_group(r"password: (\S+)", text)


@pytest.mark.django_db
def test_a_new_one_time_password_for_the_first_admin_lifts_a_lockout():
    first = one_time_password(call_command_output("bootstrap"))
    admin = Member.objects.get(email="admin@test.local")
    AccessAttempt.objects.create(
        username=admin.email,
        ip_address="192.0.2.7",
        user_agent="x",
        http_accept="*/*",
        path_info="/admin/login/",
        get_data="",
        post_data="",
        failures_since_start=99,
    )
    text = call_command_output("bootstrap", "--new-password")
    new = one_time_password(text)
    admin.refresh_from_db()
    assert new != first and admin.check_password(new) and not admin.check_password(first)
    assert not AccessAttempt.objects.filter(username=admin.email).exists()


@pytest.mark.django_db
def test_a_new_one_time_password_for_another_portal_user_only_for_portal_users():
    call_command("bootstrap", stdout=StringIO())
    staff = Member.objects.create_user(
        email="staff@test.local", first_name="S", role=Role.objects.get(name="Fab Staff"), is_staff=True
    )
    Member.objects.create_user(email="member@test.local", first_name="M", role=Role.objects.get(name="Fab Users"))
    new = one_time_password(call_command_output("bootstrap", "--new-password", "--email", "STAFF@test.local"))
    staff.refresh_from_db()
    assert staff.check_password(new)
    with pytest.raises(CommandError, match="No active portal user"):
        call_command("bootstrap", "--new-password", "--email", "member@test.local", stdout=StringIO())


def call_command_output(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_it_creates_the_default_roles_and_one_anonymous_member():
    call_command("bootstrap", stdout=StringIO())
    call_command("bootstrap", stdout=StringIO())
    assert set(Role.objects.values_list("name", flat=True)) >= {"admins", "Fab Staff", "Fab Users", ANONYMOUS_ROLE}
    assert Member.objects.filter(role__name=ANONYMOUS_ROLE).count() == 1
    assert not Role.objects.get(name="Fab Users").authorize_all  # the old seed made every member a super user


@pytest.mark.django_db
def test_card_holders_have_no_usable_password():
    member = Member.objects.create_user(first_name="Card", last_name="Holder")
    assert not member.has_usable_password()
    assert member.email is None


@pytest.mark.django_db
def test_sqlite_runs_in_wal_mode_with_a_busy_timeout():
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"
        cursor.execute("PRAGMA busy_timeout")
        assert cursor.fetchone()[0] >= 5000
