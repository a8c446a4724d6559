"""Excel exports: exactly the filtered rows, readable columns, no secrets, formulae escaped."""

from __future__ import annotations

from datetime import timedelta
from io import BytesIO

import openpyxl
import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from machines.models import Machine, Use
from members.models import Member

from .conftest import Lab

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_passwords")]


def export(client: Client, model: str, query: str = "") -> list[tuple]:
    """Follow the list's Export link (with the list's filters): one GET, the file comes back."""
    url = reverse(f"admin:{model}_export") + query
    response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("application/vnd.openxmlformats")
    sheet = openpyxl.load_workbook(BytesIO(response.content), read_only=True).active
    return [row for row in sheet.iter_rows(values_only=True) if any(v is not None for v in row)]


def uses(lab: Lab) -> None:
    now = timezone.now()
    for i, (member, machine) in enumerate([(lab.normal, lab.laser), (lab.normal, lab.printer), (lab.staff, lab.laser)]):
        start = now - timedelta(days=i + 1)
        Use.objects.create(
            member=member, machine=machine, started_at=start, ended_at=start + timedelta(minutes=30),
            last_seen=start + timedelta(minutes=30), duration=1800,
        )  # fmt: skip


def test_the_uses_export_holds_exactly_the_filtered_rows(admin_client: Client, lab: Lab) -> None:
    uses(lab)
    rows = export(admin_client, "machines_use", f"?member__id__exact={lab.normal.pk}")
    header, body = tuple(str(h).lower() for h in rows[0]), rows[1:]
    assert len(body) == 2
    assert {r[header.index("machine")] for r in body} == {"LASER 1", "PRINTER 1"}
    assert {r[header.index("member")] for r in body} == {"Nina Test"}
    assert all(r[header.index("hours")] == 0.5 for r in body)
    # Local wall-clock time (Europe/Rome in the settings), not UTC.
    first = Use.objects.filter(member=lab.normal).order_by("-started_at").first()
    assert first is not None
    started = body[0][header.index("started")]
    assert started == timezone.localtime(first.started_at).replace(tzinfo=None, microsecond=started.microsecond)


def test_the_members_export_has_readable_columns_and_no_secrets(admin_client: Client, lab: Lab) -> None:
    lab.admin.set_password("s3cret-pass")
    lab.admin.is_superuser = True
    lab.admin.save()
    rows = export(admin_client, "members_member", "?q=Test")
    header = [str(h).lower() for h in rows[0]]
    assert not any("password" in h or "superuser" in h or "permission" in h for h in header)
    assert "role" in header and "cards" in header
    flat = " ".join(str(v) for r in rows for v in r)
    assert "pbkdf2" not in flat and "md5$" not in flat and "s3cret" not in flat
    assert len(rows) - 1 == Member.objects.filter(last_name="Test").count()
    nina = next(r for r in rows[1:] if r[header.index("name")] == "Nina")
    assert nina[header.index("role")] == "USER"
    assert nina[header.index("cards")] == "aabbccd3"
    assert nina[header.index("authorized machines")] == "LASER 1"


def test_formulae_in_names_are_escaped(admin_client: Client, lab: Lab) -> None:
    Member.objects.filter(pk=lab.normal.pk).update(first_name="=1+1", last_name="")
    Machine.objects.filter(pk=lab.laser.pk).update(name='=HYPERLINK("http://evil")')
    uses(lab)
    for model, query in (("members_member", "?q=1%2B1"), ("machines_use", f"?member__id__exact={lab.normal.pk}")):
        rows = export(admin_client, model, query)
        cells = [v for r in rows[1:] for v in r if isinstance(v, str)]
        assert cells and not any(v.startswith("=") for v in cells), cells


def test_machines_and_interventions_export(admin_client: Client, lab: Lab) -> None:
    rows = export(admin_client, "machines_machine", "?blocked__exact=0")
    header = tuple(str(h).lower() for h in rows[0])
    assert {r[header.index("name")] for r in rows[1:]} == {"LASER 1", "PRINTER 1"}
    assert "T1" in {r[header.index("type")] for r in rows[1:]}
    rows = export(admin_client, "machines_intervention")
    assert len(rows) == 1  # header only


def test_one_click_gives_the_list_in_the_users_language(admin_client: Client, lab: Lab) -> None:
    uses(lab)
    admin_client.cookies["django_language"] = "it"
    response = admin_client.get(reverse("admin:machines_use_export") + f"?member__id__exact={lab.normal.pk}")
    assert response.status_code == 200 and 'filename="Utilizzi ' in response["Content-Disposition"]
    book = openpyxl.load_workbook(BytesIO(response.content), read_only=True)
    assert book.sheetnames == ["Utilizzi"]  # not "Tablib Dataset"
    header = next(book.active.iter_rows(values_only=True))
    assert header[:3] == ("Id", "Macchina", "ID scheda")
