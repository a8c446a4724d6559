"""Cases that need PostgreSQL, run by tests/test_postgresql.py in a child pytest on a throwaway cluster (together
with tests/test_audit.py). Not collected by a plain ``pytest`` run: the file name does not start with ``test_``.

Restoring from an uploaded backup is supported on PostgreSQL (a ``pg_dump --format=custom`` archive, restored with
``pg_restore``; operations/restore.py): the System page's download and restore, end to end.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from pytest_django import Settings

from machines.models import Authorization
from members.models import Card, Member

from .conftest import Lab
from .test_system_tools import token_of, upload

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL only: tests/test_postgresql.py runs it on a throwaway cluster"
)


@pytest.fixture
def data_dir(settings: Settings, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path / "data"
    settings.DATA_DIR.mkdir()
    return settings.DATA_DIR


@pytest.mark.django_db(transaction=True)  # pg_dump and pg_restore use their own connections
def test_a_restore_on_postgresql_brings_back_the_pg_dump_backup(
    client: Client, lab: Lab, boss: Member, data_dir: Path
) -> None:
    client.force_login(boss)
    system = client.get("/admin/system/").content.decode()
    assert "/admin/system/backup/" in system and "/admin/system/restore/" in system
    made = b"".join(client.get("/admin/system/backup/").streaming_content)  # type: ignore[attr-defined]
    assert made.startswith(b"PGDMP")
    # After the backup: Nina loses machine 1 and a new card appears.
    Authorization.objects.filter(member=lab.normal, machine=lab.laser).delete()
    Card.objects.create(uid="ddeeff01", member=lab.unauthorized)

    page = upload(client, "fabomatic-20260101.pgdump", made)
    assert "Yes, replace the database" in page
    assert not Authorization.objects.filter(member=lab.normal).exists()  # nothing replaced before confirmation
    response = client.post("/admin/system/restore/", {"token": token_of(page)})

    assert response.status_code == 302
    assert "Database restored" in client.get(response["Location"]).content.decode()
    assert Authorization.objects.filter(member=lab.normal, machine=lab.laser).exists()
    assert not Card.objects.filter(uid="ddeeff01").exists()
    saved = list((data_dir / "backups").glob("*-before-restore.pgdump"))  # the database as it was, kept
    assert len(saved) == 1 and saved[0].read_bytes().startswith(b"PGDMP")
    assert not list((data_dir / "restore").iterdir())  # the upload is gone


def test_a_sqlite_backup_is_refused_on_postgresql(client: Client, lab: Lab, boss: Member, data_dir: Path) -> None:
    client.force_login(boss)
    page = upload(client, "fabomatic-20260101.sqlite3", b"SQLite format 3\x00" + b"\x00" * 4000)
    assert "This is not a pg_dump archive (a backup of this portal ends in .pgdump)." in page
    assert Authorization.objects.count() == 3
