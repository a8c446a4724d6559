"""The lab's kiosk screen (issue 12, item 6): a secret address staff create and revoke, a read-only page with no
login that shows no staff data, locks first, and its websocket fed by the dashboard's events."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django import Settings

from machines import kiosk
from machines.dashboard import events
from machines.dashboard.tiles import machine_tile
from machines.kiosk_consumer import CLOSE_GONE
from machines.models import FaultReport, KioskScreen, Machine, MachineCheck, MachineType, Use
from members.models import Member, Role
from telemetry.models import Board

from .conftest import Lab

pytestmark = pytest.mark.usefixtures("fast_passwords")

LIST = reverse("admin:machines_kioskscreen_changelist")
ADD = reverse("admin:machines_kioskscreen_add")


def page_of(secret: str, query: str = "") -> str:
    return reverse("kiosk", args=[secret]) + query


@pytest.fixture
def screen(lab: Lab) -> tuple[KioskScreen, str]:
    return kiosk.create_screen("Entrance TV", by=lab.admin)


def _order(html: str) -> list[str]:
    return re.findall(
        r'<article class="k-tile" data-id="\d+" data-state="([a-z_]+)">\s*<h2 class="k-name">([^<]*)', html
    )


def _lock_lab(lab: Lab) -> None:
    """One machine per group of the order: out of order, to check, blocked, maintenance due, in use, free."""
    now = timezone.now()
    plain = MachineType.objects.create(name="Plain", requires_authorization=False)
    for pk, name in ((11, "A FREE"), (12, "B BLOCKED"), (13, "C CHECK"), (14, "D BROKEN"), (15, "E MINOR")):
        Machine.objects.create(id=pk, name=name, type=plain, last_seen=now)
    Machine.objects.filter(pk=12).update(blocked=True)
    MachineCheck.objects.create(machine_id=13, requested_at=now)
    FaultReport.objects.create(machine_id=14, severity=FaultReport.Severity.OUT_OF_ORDER, description="smoke")
    FaultReport.objects.create(machine_id=15, severity=FaultReport.Severity.MINOR, description="scratched")
    # A closed out-of-order fault locks nothing.
    FaultReport.objects.create(
        machine_id=11, severity=FaultReport.Severity.OUT_OF_ORDER, description="fixed", closed_at=now
    )
    Machine.objects.filter(pk=lab.laser.pk).update(hours=50)  # its 10 h item is due
    Use.objects.create(member=lab.normal, machine=lab.printer, started_at=now - timedelta(minutes=5), last_seen=now)


# --- the page ---------------------------------------------------------------------------------------------------


def test_a_wrong_malformed_replaced_or_revoked_address_is_a_plain_404(client: Client, lab: Lab) -> None:
    screen, secret = kiosk.create_screen("TV", by=lab.admin)
    assert client.get(page_of(secret)).status_code == 200
    nowhere = client.get("/no-such-page/")
    wrong = client.get(page_of("A" * 43))
    malformed = client.get(page_of("short"))
    new = kiosk.replace_secret(screen)
    replaced = client.get(page_of(secret))
    assert client.get(page_of(new)).status_code == 200
    stale = KioskScreen.objects.get(pk=screen.pk)  # another administrator's page, loaded before the revocation
    assert kiosk.revoke(screen) is True
    assert kiosk.revoke(stale) is False and stale.revoked_at == screen.revoked_at
    revoked = client.get(page_of(new))
    for response in (wrong, malformed, replaced, revoked):
        assert response.status_code == 404
        assert response.content == nowhere.content  # nothing says a screen was ever there
        assert not response.cookies
    with pytest.raises(ValueError):
        kiosk.replace_secret(KioskScreen.objects.get(pk=screen.pk))  # revoked stays revoked
    assert client.get(page_of(new)).status_code == 404


def test_the_page_sets_no_session_and_keeps_its_address_to_itself(client: Client, screen: tuple) -> None:
    _, secret = screen
    response = client.get(page_of(secret))
    assert response.status_code == 200
    assert not response.cookies  # no session, no CSRF cookie
    assert response["Referrer-Policy"] == "no-referrer"
    assert "noindex" in response["X-Robots-Tag"]
    assert "no-store" in response["Cache-Control"]
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    html = response.content.decode()
    assert "<script>" not in html and " style=" not in html and " on" + "click" not in html  # nothing inline
    assert client.post(page_of(secret)).status_code == 405  # read-only


def test_the_page_shows_first_names_only_and_no_staff_data(client: Client, lab: Lab, screen: tuple) -> None:
    _, secret = screen
    now = timezone.now()
    Use.objects.create(member=lab.normal, machine=lab.laser, started_at=now - timedelta(minutes=3), last_seen=now)
    Board.objects.create(machine=lab.laser, ip_address="192.168.1.77", firmware="hardware-rev0-it_IT,v1.0.4")
    html = client.get(page_of(secret)).content.decode()
    assert "Nina" in html
    assert "0:03:" in html  # the time in use
    for secret_data in ("Test", "nina@lab.test", "@lab.test", "aabbccd3", "192.168.1.77", "v1.0.4", "hardware-rev0"):
        assert secret_data not in html, secret_data


def test_names_are_hidden_when_the_setting_says_so(client: Client, lab: Lab, screen: tuple, settings: Settings) -> None:
    settings.KIOSK_SHOW_NAMES = False
    _, secret = screen
    now = timezone.now()
    Use.objects.create(member=lab.normal, machine=lab.laser, started_at=now, last_seen=now)
    html = client.get(page_of(secret)).content.decode()
    assert "Nina" not in html
    assert ("in_use", "LASER 1") in _order(html)
    assert '<p class="k-state">In use</p>' in html


def test_faults_and_locks_come_first(client: Client, lab: Lab, screen: tuple) -> None:
    _, secret = screen
    _lock_lab(lab)
    order = _order(client.get(page_of(secret)).content.decode())
    assert order == [
        ("out_of_order", "D BROKEN"),
        ("to_check", "C CHECK"),
        ("blocked", "B BLOCKED"),
        ("maintenance", "LASER 1"),
        ("free", "A FREE"),
        ("free", "E MINOR"),  # a minor fault locks nothing
        ("in_use", "PRINTER 1"),
    ]


def test_the_lab_language_with_a_lang_override(client: Client, lab: Lab, screen: tuple, settings: Settings) -> None:
    _, secret = screen
    _lock_lab(lab)
    english = client.get(page_of(secret))
    assert english["Content-Language"] == "en" and "Out of order" in english.content.decode()
    italian = client.get(page_of(secret, "?lang=it"))
    assert italian["Content-Language"] == "it"
    assert '<html lang="it">' in italian.content.decode() and "Fuori servizio" in italian.content.decode()
    settings.LANGUAGE_CODE = "it"
    assert "Da controllare" in client.get(page_of(secret)).content.decode()
    assert client.get(page_of(secret, "?lang=xx"))["Content-Language"] == "it"  # unknown: the lab's


def test_last_opened_is_stamped_at_most_once_a_minute(client: Client, screen: tuple) -> None:
    kiosk_screen, secret = screen
    client.get(page_of(secret))
    kiosk_screen.refresh_from_db()
    first = kiosk_screen.last_seen_at
    assert first is not None
    client.get(page_of(secret))
    kiosk_screen.refresh_from_db()
    assert kiosk_screen.last_seen_at == first
    KioskScreen.objects.filter(pk=kiosk_screen.pk).update(last_seen_at=first - timedelta(seconds=61))
    client.get(page_of(secret))
    kiosk_screen.refresh_from_db()
    assert kiosk_screen.last_seen_at > first


# --- the portal -------------------------------------------------------------------------------------------------


@pytest.fixture
def boss_client(boss: Member) -> Client:
    client = Client()
    client.force_login(boss)
    return client


def test_only_portal_administrators_manage_kiosk_screens(lab: Lab, screen: tuple) -> None:
    kiosk_screen, _ = screen
    staff = Member.objects.create_user(
        email="tech@lab.test", first_name="Tech", role=Role.objects.get(name="STAFF"), is_staff=True
    )
    client = Client()
    client.force_login(staff)
    for url in (LIST, ADD, reverse("admin:machines_kioskscreen_change", args=[kiosk_screen.pk])):
        assert client.get(url).status_code == 403, url
    assert (
        client.post(reverse("admin:machines_kioskscreen_revoke", args=[kiosk_screen.pk]), {"post": "yes"}).status_code
        == 403
    )
    assert "kioskscreen" not in client.get(reverse("admin:index")).content.decode()
    kiosk_screen.refresh_from_db()
    assert kiosk_screen.revoked_at is None


def test_creating_a_screen_shows_its_address_once(boss_client: Client, boss: Member) -> None:
    response = boss_client.post(ADD, {"name": "Entrance TV"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    html = response.content.decode()
    url = re.search(r'<code class="fab-secret" id="kiosk-url">([^<]+)</code>', html)
    assert url is not None
    assert re.fullmatch(r"https?://[^/]+/kiosk/[A-Za-z0-9_-]{43}/", url.group(1))
    secret = url.group(1).rstrip("/").rsplit("/", 1)[1]
    assert "you will not see it again" in html and "data-fab-copy" in html
    created = KioskScreen.objects.get(name="Entrance TV")
    assert created.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert created.created_by == boss
    assert secret not in boss_client.get(LIST).content.decode()
    change = boss_client.get(reverse("admin:machines_kioskscreen_change", args=[created.pk])).content.decode()
    assert secret not in change and "Entrance TV" in change
    assert Client().get(page_of(secret)).status_code == 200
    from auditlog.models import LogEntry

    assert LogEntry.objects.get_for_object(created).filter(action=LogEntry.Action.CREATE).exists()


def test_the_address_is_on_public_url_when_it_is_set(boss_client: Client, settings: Settings) -> None:
    settings.PUBLIC_URL_SET, settings.PUBLIC_URL = True, "https://fabpi.local:23336"
    html = boss_client.post(ADD, {"name": "TV"}).content.decode()
    assert 'id="kiosk-url">https://fabpi.local:23336/kiosk/' in html
    settings.PUBLIC_URL_SET = False
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "lab.example.org"]
    html = boss_client.post(ADD, {"name": "TV 2"}, HTTP_HOST="lab.example.org").content.decode()
    assert 'id="kiosk-url">http://lab.example.org/kiosk/' in html


def test_revoking_is_confirmed_recorded_and_final(boss_client: Client, boss: Member, screen: tuple) -> None:
    from auditlog.models import LogEntry

    kiosk_screen, secret = screen
    url = reverse("admin:machines_kioskscreen_revoke", args=[kiosk_screen.pk])
    assert boss_client.get(url).status_code == 405
    asked = boss_client.post(url)
    assert asked.status_code == 200 and "cannot be undone" in asked.content.decode()
    kiosk_screen.refresh_from_db()
    assert kiosk_screen.revoked_at is None  # only asked
    assert boss_client.post(url, {"post": "yes"}).status_code == 302
    kiosk_screen.refresh_from_db()
    assert kiosk_screen.revoked_at is not None
    assert Client().get(page_of(secret)).status_code == 404
    revocations = LogEntry.objects.get_for_object(kiosk_screen).filter(changes__has_key="revoked_at")
    assert revocations.count() == 1  # recorded once, with who did it
    assert revocations.get().additional_data == {"message": "Kiosk screen revoked.", "params": {}}
    assert revocations.get().actor == boss
    listing = boss_client.get(LIST).content.decode()
    assert "Revoked on" in listing
    # Irreversible: no new address for a revoked screen.
    replace = reverse("admin:machines_kioskscreen_replace", args=[kiosk_screen.pk])
    boss_client.post(replace, {"post": "yes"})
    assert KioskScreen.objects.get(pk=kiosk_screen.pk).token_hash == kiosk_screen.token_hash


def test_replacing_the_address_kills_the_old_one(boss_client: Client, screen: tuple) -> None:
    kiosk_screen, secret = screen
    url = reverse("admin:machines_kioskscreen_replace", args=[kiosk_screen.pk])
    assert "new address" in boss_client.post(url).content.decode()  # the confirmation
    assert Client().get(page_of(secret)).status_code == 200
    html = boss_client.post(url, {"post": "yes"}).content.decode()
    new = re.search(r'id="kiosk-url">[^<]+/kiosk/([A-Za-z0-9_-]+)/<', html)
    assert new is not None
    assert Client().get(page_of(secret)).status_code == 404
    assert Client().get(page_of(new.group(1))).status_code == 200


# --- the socket -------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_layers() -> Iterator[None]:
    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


def _socket(secret: str) -> WebsocketCommunicator:
    from fabomatic.asgi import application

    return WebsocketCommunicator(
        application, f"/ws/kiosk/{secret}/", headers=[(b"origin", b"http://localhost"), (b"host", b"localhost")]
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("fresh_layers")
async def test_the_socket_sends_tiles_without_staff_data_and_drops_other_events(lab: Lab) -> None:
    screen, secret = await database_sync_to_async(kiosk.create_screen)("TV", by=None)
    await database_sync_to_async(Board.objects.create)(machine=lab.laser, ip_address="10.0.0.9", firmware="v1.0.4")
    socket = _socket(secret)
    connected, _ = await socket.connect()
    assert connected
    snapshot = await socket.receive_json_from()
    assert snapshot["type"] == "snapshot" and {t["name"] for t in snapshot["tiles"]} == {"LASER 1", "PRINTER 1"}
    assert set(snapshot["tiles"][0]) == {"id", "name", "state", "user", "since", "maintenance", "last_seen"}
    layer = get_channel_layer()
    # Whatever else the dashboard's group may carry is dropped, and the socket lives on.
    await layer.group_send(events.GROUP, {"type": "machine.refusal", "email": "nina@lab.test"})
    now = timezone.now()
    await database_sync_to_async(Use.objects.create)(
        member=lab.normal, machine=lab.laser, started_at=now, last_seen=now
    )
    await database_sync_to_async(FaultReport.objects.create)(
        machine=lab.laser, severity=FaultReport.Severity.OUT_OF_ORDER, description="smoke"
    )
    tile = await database_sync_to_async(machine_tile)(lab.laser.pk)
    assert tile is not None and tile["ip"] == "10.0.0.9"
    await layer.group_send(events.GROUP, events.tile_update(tile))
    update = await socket.receive_json_from(timeout=5)
    assert update["type"] == "machine.update"
    assert update["tile"]["state"] == "out_of_order" and update["tile"]["user"] == "Nina"
    assert "ip" not in update["tile"] and "firmware" not in update["tile"]
    await layer.group_send(events.GROUP, events.heartbeat(lab.laser.pk, now))
    assert (await socket.receive_json_from(timeout=5))["type"] == "machine.heartbeat"
    await socket.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("fresh_layers")
async def test_a_wrong_address_is_closed_and_a_revoked_one_closes(lab: Lab) -> None:
    wrong = _socket("B" * 43)
    connected, _ = await wrong.connect()
    assert connected
    assert (await wrong.receive_output(timeout=5)) == {"type": "websocket.close", "code": CLOSE_GONE}

    screen, secret = await database_sync_to_async(kiosk.create_screen)("TV", by=None)
    socket = _socket(secret)
    assert (await socket.connect())[0]
    await socket.receive_json_from()

    def revoke() -> None:
        from django.db import transaction

        with transaction.atomic():
            kiosk.revoke(screen)

    await database_sync_to_async(revoke)()  # its on_commit tells the open screens at once
    assert (await socket.receive_output(timeout=5)) == {"type": "websocket.close", "code": CLOSE_GONE}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("fresh_layers")
async def test_an_open_screen_rechecks_its_address_by_itself(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """The message of the revocation lost (another process, Redis away): the screen's own check closes it."""
    monkeypatch.setattr(kiosk, "RECHECK_SECONDS", 0.3)
    screen, secret = await database_sync_to_async(kiosk.create_screen)("TV", by=None)
    socket = _socket(secret)
    assert (await socket.connect())[0]
    await socket.receive_json_from()
    # Each check sends a fresh snapshot: a lock no event announced shows too.
    await database_sync_to_async(MachineCheck.objects.create)(machine=lab.laser, requested_at=timezone.now())
    fresh = await socket.receive_json_from(timeout=5)
    assert fresh["type"] == "snapshot" and fresh["tiles"][0]["state"] == "to_check"
    await database_sync_to_async(KioskScreen.objects.filter(pk=screen.pk).update)(revoked_at=timezone.now())
    while (message := await socket.receive_output(timeout=5))["type"] == "websocket.send":
        pass
    assert message == {"type": "websocket.close", "code": CLOSE_GONE}


def test_a_tile_state_the_dashboard_may_add_one_day_never_breaks_the_screen(lab: Lab) -> None:
    tile = machine_tile(lab.laser.pk)
    assert tile is not None
    assert kiosk.kiosk_tile({**tile, "state": "out_of_order"}, None)["state"] == "out_of_order"
    assert kiosk.kiosk_tile({**tile, "state": "something_new"}, None)["state"] == "free"  # type: ignore[typeddict-item]
    assert kiosk.kiosk_tile(tile, "to_check", show_names=False)["state"] == "to_check"
    assert len(kiosk.KIOSK_STATES) == len(set(kiosk.KIOSK_STATES))


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("fresh_layers")
async def test_the_socket_hides_names_too_when_the_setting_says_so(lab: Lab, settings: Settings) -> None:
    settings.KIOSK_SHOW_NAMES = False
    _, secret = await database_sync_to_async(kiosk.create_screen)("TV", by=None)
    now = timezone.now()
    await database_sync_to_async(Use.objects.create)(
        member=lab.normal, machine=lab.laser, started_at=now, last_seen=now
    )
    socket = _socket(secret)
    assert (await socket.connect())[0]
    snapshot = await socket.receive_json_from()
    laser = next(t for t in snapshot["tiles"] if t["id"] == lab.laser.pk)
    assert laser["state"] == "in_use" and laser["since"] and laser["user"] is None
    tile = await database_sync_to_async(machine_tile)(lab.laser.pk)
    assert tile is not None and tile["user"] == "Nina"  # the dashboard's tile has it; the screen's has not
    await get_channel_layer().group_send(events.GROUP, events.tile_update(tile))
    update = await socket.receive_json_from(timeout=5)
    assert update["tile"]["user"] is None and "Nina" not in str(update)
    await socket.disconnect()
