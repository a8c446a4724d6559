"""First run: defaults, the first administrator, and a production-grade SQLite."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from members.models import ANONYMOUS_ROLE, Member, Role


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
    assert "password" not in again.getvalue()
    assert Member.objects.filter(is_staff=True).count() == 1


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
