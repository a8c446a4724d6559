"""The Firmware page (operations/firmware.py), drift and board health on the portal's pages, the heap history."""

from __future__ import annotations

import io
import json
import os
import zipfile
from datetime import UTC, datetime, timedelta

import pytest
from auditlog.models import LogEntry
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from machines.models import Machine
from members.models import Member, Role
from operations import system
from telemetry import fastpath, health, ingest, rollout
from telemetry import protocol as p
from telemetry.models import FirmwareImage, HeapSample, OtaPush, Rollout

from .conftest import Lab

ENV = "hardware-rev0-it_IT"
BIN = b"\xe9" + os.urandom(8000)


def release_zip(version: str = "1.0.4") -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("firmware.bin", BIN)
    buffer.seek(0)
    buffer.name = f"FW-{ENV}-{version}.zip"
    return buffer


def alive(
    machine_id: int, version: str, ip: str = "192.168.1.50", heap: int = 200000, now: datetime | None = None
) -> None:
    ingest.process(machine_id, p.Alive(version=version, ip=ip, serial="dcda0c419794", heap=heap), now=now)


@pytest.fixture(autouse=True)
def no_runner(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The page launches manage.py ota_rollout: recorded here instead (the runner is tested in test_ota_rollout)."""
    launched: list[bool] = []

    def launch() -> bool:
        launched.append(True)
        return True

    monkeypatch.setattr(rollout, "launch_runner", launch)
    cache.clear()
    return launched


@pytest.fixture
def staff(lab: Lab) -> Member:
    return Member.objects.create_user(
        email="viewer@lab.test", first_name="V", role=Role.objects.get(name="STAFF"), is_staff=True
    )


def test_only_portal_administrators_reach_the_firmware_page(client: Client, lab: Lab, staff: Member) -> None:
    image = FirmwareImage.objects.create(environment=ENV, version="1.0.4", data=BIN, md5="0" * 32, size=len(BIN))
    client.force_login(staff)
    assert client.get("/admin/system/").status_code == 200
    assert client.get("/admin/system/firmware/").status_code == 403
    assert client.get("/admin/system/firmware/status/").status_code == 403
    assert client.post("/admin/system/firmware/", {"image": release_zip()}).status_code == 403
    assert (
        client.post("/admin/system/firmware/rollout/", {"image": image.pk, "machine": 1, "post": "yes"}).status_code
        == 403
    )
    assert FirmwareImage.objects.count() == 1 and not Rollout.objects.exists()


def test_an_administrator_uploads_a_release_zip(client: Client, boss: Member) -> None:
    client.force_login(boss)
    response = client.post("/admin/system/firmware/", {"image": release_zip()}, follow=True)
    assert response.status_code == 200
    image = FirmwareImage.objects.get()
    assert (image.environment, image.version, bytes(image.data), image.uploaded_by) == (ENV, "1.0.4", BIN, boss)
    assert LogEntry.objects.get_for_object(image).filter(actor=boss).exists()
    again = client.post("/admin/system/firmware/", {"image": release_zip()}, follow=True)
    assert "already has an image of this version" in again.content.decode()
    bad = io.BytesIO(b"\x00" * 8000)
    bad.name = "firmware.bin"
    page = client.post("/admin/system/firmware/", {"image": bad, "environment": ENV, "version": "1.0.5"}, follow=True)
    assert "0xE9" in page.content.decode()
    assert FirmwareImage.objects.count() == 1


def test_a_rollout_is_confirmed_then_started_and_followed(
    client: Client, lab: Lab, boss: Member, no_runner: list[bool]
) -> None:
    alive(1, f"{ENV},1.0.1-3-g0ab6099", ip="192.168.1.51")
    alive(2, f"{ENV},1.0.1-3-g0ab6099", ip="192.168.1.52")
    image = FirmwareImage.objects.create(environment=ENV, version="1.0.4", data=BIN, md5="0" * 32, size=len(BIN))
    client.force_login(boss)
    page = client.get("/admin/system/firmware/").content.decode()
    assert "LASER 1" in page and "PRINTER 1" in page
    confirm = client.post("/admin/system/firmware/rollout/", {"image": image.pk, "machine": [2, 1]})
    assert confirm.status_code == 200 and "canary" in confirm.content.decode()
    assert not Rollout.objects.exists()
    no_runner.clear()  # the page asked too (the real launcher does nothing while no rollout is pending)
    client.post("/admin/system/firmware/rollout/", {"image": image.pk, "machine": [2, 1], "post": "yes"})
    r = Rollout.objects.get()
    assert r.started_by == boss and no_runner == [True]
    assert list(r.pushes.values_list("machine_id", "position")) == [(2, 0), (1, 1)]
    assert LogEntry.objects.get_for_object(r).filter(actor=boss).exists()
    OtaPush.objects.filter(rollout=r, machine_id=2).update(state=OtaPush.State.CONFIRMING)
    status = json.loads(client.get("/admin/system/firmware/status/").content)
    assert status["runner"] is False
    pushes = status["rollouts"][0]["pushes"]
    assert [(x["machine"], x["state"], x["canary"]) for x in pushes] == [
        ("PRINTER 1", "confirming", True),
        ("LASER 1", "waiting", False),
    ]
    client.post(f"/admin/system/firmware/rollout/{r.pk}/cancel/")
    r.refresh_from_db()
    assert r.state == Rollout.State.CANCELLED
    assert OtaPush.objects.get(rollout=r, machine_id=1).state == OtaPush.State.SKIPPED


def test_boards_of_another_environment_cannot_be_chosen(client: Client, lab: Lab, boss: Member) -> None:
    alive(1, "hardware-rev1-en_US,1.0.1")
    image = FirmwareImage.objects.create(environment=ENV, version="1.0.4", data=BIN, md5="0" * 32, size=len(BIN))
    client.force_login(boss)
    client.post("/admin/system/firmware/rollout/", {"image": image.pk, "machine": 1, "post": "yes"})
    assert not Rollout.objects.exists()


def test_drift_and_health_on_the_system_page_the_boards_list_and_the_dashboard(
    client: Client, lab: Lab, boss: Member, monkeypatch: pytest.MonkeyPatch
) -> None:
    alive(1, f"{ENV},1.0.1-3-g0ab6099")
    alive(2, f"{ENV},1.0.4")
    FirmwareImage.objects.create(environment=ENV, version="1.0.4", data=BIN, md5="0" * 32, size=len(BIN))
    FirmwareImage.objects.create(environment=ENV, version="1.0.3", data=BIN, md5="1" * 32, size=len(BIN))
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    for i, low in enumerate([180000, 150000, 170000]):
        HeapSample.objects.create(machine=lab.laser, hour=hour - timedelta(hours=3 - i), minimum=low)
    assert health.behind_count() == 1
    client.force_login(boss)
    page = client.get("/admin/system/").content.decode()
    assert "behind: 1.0.4 available" in page and "1.0.1-3-g0ab6099" in page
    assert health.sparkline([180000, 150000, 170000]) in page
    stats = [{"Connected": True, "stale": False, "latency": {"1": [3.1, 9.8, 32]}}]
    monkeypatch.setattr(system, "bridge_stats", lambda: stats)  # as a live bridge publishes them
    boards = client.get("/admin/telemetry/board/").content.decode()
    assert "behind: 1.0.4 available" in boards and "up to date" in boards
    assert "3.1 / 9.8 ms" in boards and health.sparkline([180000, 150000, 170000]) in boards
    dashboard = client.get("/admin/").content.decode()
    assert "1 board runs older firmware than the newest image uploaded." in dashboard


def test_the_bridge_writes_each_boards_hourly_heap_minimum_once(lab: Lab, django_assert_num_queries: object) -> None:
    fastpath.heap_minima.take()
    fastpath.heap_minima.current.clear()  # other tests' boards
    start = datetime(2026, 11, 30, 10, 5, tzinfo=UTC)
    alive(1, f"{ENV},1.0.4", heap=200000, now=start)  # a new board: the transactional path
    for minutes, heap in ((25, 150000), (50, 190000)):
        at = start + timedelta(minutes=minutes)
        Machine.objects.filter(pk=1).update(last_seen=at - timedelta(seconds=30))  # online
        request = p.Alive(f"{ENV},1.0.4", "192.168.1.50", "dcda0c419794", heap)
        with django_assert_num_queries(1):  # type: ignore[operator]  # the fast path stays one query
            assert fastpath.FAST[p.Alive](1, request, at) is not None
    fastpath.flush_heartbeats()
    assert not HeapSample.objects.exists()  # the hour is not over
    fastpath.heap_minima.note(1, 210000, start + timedelta(minutes=60))  # the first alive of 11:00
    assert fastpath.heartbeats_pending()
    fastpath.flush_heartbeats()
    fastpath.flush_heartbeats()
    assert list(HeapSample.objects.values_list("machine_id", "hour", "minimum")) == [
        (1, start.replace(minute=0), 150000)
    ]
