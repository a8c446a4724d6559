"""The System page's tools: restore from an uploaded backup, full logs, host resources, masked settings, latency."""

from __future__ import annotations

import gzip
import json
import sqlite3
import zipfile
from io import BytesIO
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone
from pytest_django import Settings

from machines.models import Authorization
from members.models import Card, Member, Role
from operations import tools
from telemetry.models import Board
from telemetry.mqtt import Bridge

from .boards import SimBoard
from .conftest import Lab
from .services import Broker

N = "aabbccd3"  # Nina, authorized on M1


@pytest.fixture
def data_dir(settings: Settings, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path / "data"
    settings.DATA_DIR.mkdir()
    return settings.DATA_DIR


def upload(client: Client, name: str, data: bytes) -> str:
    return client.post("/admin/system/restore/", {"backup": SimpleUploadedFile(name, data)}).content.decode()


def token_of(page: str) -> str:
    return page.split('name="token" value="')[1].split('"')[0]


@pytest.mark.django_db(transaction=True)  # the backup and the restore use their own connections, as the bridge does
def test_a_restore_brings_back_the_backup_and_the_bridge_answers_from_it(
    client: Client, lab: Lab, boss: Member, data_dir: Path, m1: SimBoard
) -> None:
    client.force_login(boss)
    made = client.get("/admin/system/backup/").getvalue()  # the existing backup download
    # After the backup: Nina loses machine 1 and a new card appears.
    Authorization.objects.filter(member=lab.normal, machine=lab.laser).delete()
    Card.objects.create(uid="ddeeff01", member=lab.unauthorized)
    assert m1.ask({"action": "checkuser", "uid": N})["is_valid"] is False

    page = upload(client, "fabomatic-20260101.sqlite3.gz", gzip.compress(made))  # gzipped, as manage.py backup's
    assert "Yes, replace the database" in page
    assert Authorization.objects.filter(member=lab.normal).count() == 0  # nothing replaced before confirmation

    response = client.post("/admin/system/restore/", {"token": token_of(page)})

    assert response.status_code == 302
    assert Authorization.objects.filter(member=lab.normal, machine=lab.laser).exists()
    assert not Card.objects.filter(uid="ddeeff01").exists()
    saved = list((data_dir / "backups").glob("*-before-restore.sqlite3"))
    assert len(saved) == 1
    with sqlite3.connect(saved[0]) as db:  # the database as it was, kept
        assert db.execute("SELECT COUNT(*) FROM members_card WHERE uid = 'ddeeff01'").fetchone() == (1,)
    assert m1.ask({"action": "checkuser", "uid": N})["is_valid"] is True  # the running bridge reads the restored data
    assert not list((data_dir / "restore").iterdir())  # the upload is gone


def test_a_file_that_is_not_a_database_is_refused(client: Client, lab: Lab, boss: Member, data_dir: Path) -> None:
    client.force_login(boss)
    page = upload(client, "notes.sqlite3", b"hello, this is not a database" * 100)
    assert "This is not a SQLite database file" in page
    assert Authorization.objects.count() == 3
    assert not list((data_dir / "restore").iterdir())


def test_a_database_of_another_schema_is_refused(
    client: Client, lab: Lab, boss: Member, data_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE django_migrations (id INTEGER PRIMARY KEY, app TEXT, name TEXT, applied TEXT)")
        db.execute("CREATE TABLE blog_post (id INTEGER PRIMARY KEY, title TEXT)")
    client.force_login(boss)
    page = upload(client, "other.sqlite3", other.read_bytes())
    assert "not a Fab-O-Matic backup" in page and "machines_use" in page
    assert Member.objects.filter(pk=boss.pk).exists()


def test_only_administrators_restore_or_download_logs(client: Client, lab: Lab) -> None:
    viewer = Member.objects.create_user(
        email="viewer@lab.test", first_name="V", role=Role.objects.get(name="STAFF"), is_staff=True
    )
    client.force_login(viewer)
    assert client.get("/admin/system/restore/").status_code == 403
    assert client.post("/admin/system/restore/", {"token": "0" * 32}).status_code == 403
    assert client.get("/admin/system/logs/").status_code == 403
    page = client.get("/admin/system/").content.decode()
    assert "SECRET_KEY" not in page and "/admin/system/restore/" not in page


def test_the_full_logs_download_holds_every_log_file(
    client: Client, boss: Member, settings: Settings, tmp_path: Path
) -> None:
    settings.LOG_DIR = str(tmp_path)
    (tmp_path / "web.log").write_text("line\n" * 5000)
    (tmp_path / "web.log.1").write_text("older\n")
    client.force_login(boss)
    response = client.get("/admin/system/logs/")
    with zipfile.ZipFile(BytesIO(response.getvalue())) as archive:
        assert sorted(archive.namelist()) == ["web.log", "web.log.1"]
        assert archive.read("web.log").count(b"line") == 5000


def test_the_page_shows_free_disk_memory_and_settings_with_secrets_masked(
    client: Client, boss: Member, settings: Settings
) -> None:
    settings.REDIS_URL = "redis://user:hunter2@127.0.0.1:6379/0"
    client.force_login(boss)
    page = client.get("/admin/system/").content.decode()
    assert "Free disk" in page and "Available memory" in page
    assert "SECRET_KEY" in page and django_settings.SECRET_KEY not in page
    assert "hunter2" not in page and "redis://user:********@127.0.0.1" in page
    assert tools.mask("MQTT", {"PASSWORD": "x", "HOST": "h"}) == {"PASSWORD": "********", "HOST": "h"}


@pytest.mark.django_db(transaction=True)
def test_the_bridge_publishes_each_boards_reply_latency(lab: Lab, bridge: Bridge, m1: SimBoard) -> None:
    for _ in range(3):
        m1.ask({"action": "checkmachine"})
    median, worst, count = bridge.stats_payload()["Latency"]["1"]
    assert count == 3 and 0 <= median <= worst


def test_the_page_shows_each_boards_reply_latency_from_the_bridges_stats(
    client: Client, lab: Lab, boss: Member, broker: Broker, settings: Settings
) -> None:
    settings.MQTT = {**settings.MQTT, "HOST": "127.0.0.1", "PORT": broker.port, "USERNAME": None, "TLS": False}
    cache.clear()
    Board.objects.create(machine=lab.laser, serial="A1B2C3", last_seen=timezone.now())
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    stats = {"Connected": True, "Time": timezone.now().isoformat(), "Latency": {"1": [3.1, 9.8, 32]}}
    publisher.publish("stats/test-latency", json.dumps(stats), qos=1, retain=True).wait_for_publish(5)
    try:
        client.force_login(boss)
        page = client.get("/admin/system/").content.decode()
    finally:
        publisher.publish("stats/test-latency", b"", qos=1, retain=True).wait_for_publish(5)
        publisher.disconnect()
        publisher.loop_stop()
    assert "Reply latency" in page and "3.1 / 9.8 ms" in page
