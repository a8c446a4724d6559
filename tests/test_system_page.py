"""The portal's System page and its database backup download."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from pytest_django import Settings

from members.models import Member, Role
from telemetry.models import Board, BoardCredential

from .conftest import Lab
from .services import Broker

pytestmark = pytest.mark.django_db


@pytest.fixture
def stats_broker(broker: Broker, settings: Settings) -> Iterator[Broker]:
    settings.MQTT = {**settings.MQTT, "HOST": "127.0.0.1", "PORT": broker.port, "USERNAME": None, "TLS": False}
    cache.clear()
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    payload = {
        "Connected": True,
        "Backend host": "fabpi",
        "Backend IP": "192.168.1.10",
        "Received": 1234,
        "Sent": 1100,
        "Queue": 0,
        "Time": timezone.now().isoformat(),
    }
    publisher.publish("stats/test-bridge-system", json.dumps(payload), qos=1, retain=True).wait_for_publish(5)
    yield broker
    publisher.publish("stats/test-bridge-system", b"", qos=1, retain=True).wait_for_publish(5)  # clear retained
    publisher.disconnect()
    publisher.loop_stop()


def test_the_system_page_shows_versions_boards_and_the_bridge(
    client: Client, lab: Lab, boss: Member, stats_broker: Broker, settings: Settings, tmp_path: Path
) -> None:
    Board.objects.create(
        machine=lab.laser, serial="A1B2C3", ip_address="192.168.1.51", firmware="1.2.3", free_heap=123456
    )
    settings.LOG_DIR = str(tmp_path)
    (tmp_path / "mqtt_listen.log").write_text("old line\n" * 500 + "2026-01-01 INFO telemetry: last line\n")
    client.force_login(boss)

    page = client.get("/admin/system/").content.decode()

    for text in ("Django", "Python", "paho-mqtt", "LASER 1", "A1B2C3", "192.168.1.51", "1.2.3", "fabpi", "1234"):
        assert text in page, text
    assert "last line" in page and page.count("old line") < 200
    assert "board-1" in page and "/admin/system/backup/" in page


@pytest.mark.django_db(transaction=True)  # the backup reads the file through its own connection
def test_the_backup_download_is_a_valid_sqlite_database(client: Client, lab: Lab, boss: Member, tmp_path: Path) -> None:
    client.force_login(boss)
    response = client.get("/admin/system/backup/")

    assert response.status_code == 200
    assert "attachment" in response["Content-Disposition"] and ".sqlite3" in response["Content-Disposition"]
    data = response.getvalue()  # the streamed file, joined
    assert data.startswith(b"SQLite format 3\x00")
    path = tmp_path / "backup.sqlite3"
    path.write_bytes(data)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        names = {row[0] for row in db.execute("SELECT name FROM machines_machine")}
    assert names == {"LASER 1", "PRINTER 1"}


def test_only_administrators_download_backups_or_issue_secrets(client: Client, lab: Lab) -> None:
    viewer = Member.objects.create_user(
        email="viewer@lab.test", first_name="V", role=Role.objects.get(name="STAFF"), is_staff=True
    )
    client.force_login(viewer)
    assert client.get("/admin/system/").status_code == 200
    assert client.get("/admin/system/backup/").status_code == 403
    assert client.post(f"/admin/system/credentials/{lab.laser.pk}/").status_code == 403
    assert not BoardCredential.objects.exists()


def test_an_administrator_issues_a_board_secret_shown_once(
    client: Client, lab: Lab, boss: Member, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOSQUITTO_PASSWORD_FILE", str(tmp_path / "passwd"))
    monkeypatch.setenv("MOSQUITTO_ACL_FILE", str(tmp_path / "acl"))
    client.force_login(boss)

    page = client.post(f"/admin/system/credentials/{lab.laser.pk}/").content.decode()

    assert "board-1" in page
    credential = BoardCredential.objects.get(machine=lab.laser)
    assert f"board-1:{credential.password_hash}" in (tmp_path / "passwd").read_text()
    assert "topic write machine/1" in (tmp_path / "acl").read_text()
    assert client.get("/admin/system/").content.decode().count(credential.password_hash) == 0


def test_the_machines_list_action_issues_secrets_for_the_selected_boards(
    admin_client: Client, lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOSQUITTO_PASSWORD_FILE", str(tmp_path / "passwd"))
    monkeypatch.setenv("MOSQUITTO_ACL_FILE", str(tmp_path / "acl"))

    page = admin_client.post(
        "/admin/machines/machine/",
        {"action": "issue_board_credentials", "_selected_action": [lab.laser.pk, lab.printer.pk]},
    ).content.decode()

    assert "board-1" in page and "board-2" in page
    assert BoardCredential.objects.count() == 2
    passwords = (tmp_path / "passwd").read_text()
    assert all(f"board-{c.machine_id}:{c.password_hash}" in passwords for c in BoardCredential.objects.all())


def test_a_big_lab_sees_the_silent_boards_and_the_machines_without_a_secret_first(
    client: Client, lab: Lab, boss: Member, stats_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lab of 1,000 machines made this page 600 KB: each table holds SYSTEM_ROWS rows, those to look at first."""
    from machines.models import Machine, MachineType
    from operations import system

    monkeypatch.setattr(system, "SYSTEM_ROWS", 3)
    kind = MachineType.objects.create(name="CNC")
    machines = [Machine.objects.create(id=10 + i, name=f"CNC {i}", type=kind) for i in range(5)]
    now = timezone.now()
    for i, machine in enumerate(machines):  # CNC 0 and CNC 1 silent for an hour, the others online
        Board.objects.create(machine=machine, serial=f"S{i}", last_seen=now - timedelta(hours=1 if i < 2 else 0))
    BoardCredential.objects.create(machine=machines[0], password_hash="x")
    client.force_login(boss)

    page = client.get("/admin/system/").content.decode()

    boards, _, credentials = page.partition("<h2>Boards</h2>")[2].partition("Board MQTT credentials")
    assert "5 boards" in boards and "3 online" in boards and "/admin/telemetry/board/" in boards
    # both silent ones, then one online
    assert boards.count('<tr class="fab-bad">') == 2 and boards.count('<tr class="fab-ok">') == 1
    assert "CNC 0" in boards and "CNC 1" in boards
    assert credentials.count("Issue secret") == 3 and "New secret" not in credentials  # those without one first
    assert "of 7 machines shown" in credentials and "/admin/machines/machine/" in credentials
