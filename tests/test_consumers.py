"""The dashboard websocket: staff only, broadcasts forwarded, and the real Redis layer across processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from django.utils import timezone

from fabomatic.asgi import application
from machines.dashboard import events
from machines.dashboard.consumers import CLOSE_FORBIDDEN, DashboardConsumer
from machines.dashboard.events import GROUP
from machines.models import Machine, Use
from members.models import Member, Role

from .services import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_layers() -> Iterator[None]:
    """Channel layers bind to an event loop: every test gets new ones."""
    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


def _communicator(user: object | None) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(DashboardConsumer.as_asgi(), "/ws/dashboard/")
    if user is not None:
        communicator.scope["user"] = user
    return communicator


async def _connected(user: object) -> WebsocketCommunicator:
    communicator = _communicator(user)
    connected, _ = await communicator.connect()
    assert connected
    snapshot = await communicator.receive_json_from()
    assert snapshot["type"] == "snapshot"
    return communicator


def _member(**fields: Any) -> Member:
    """A member of the lab's USER role, with an address of their own."""
    n = Member.objects.count()
    role = Role.objects.get(name="USER")
    return Member.objects.create_user(email=f"member{n}@lab.test", first_name=f"Member{n}", role=role, **fields)


@pytest.fixture
def staff(lab):
    return lab.admin.__class__.objects.create_user(
        email="desk@lab.test", first_name="Desk", password="x", is_staff=True, role=lab.admin.role
    )


async def test_it_accepts_staff_and_sends_a_snapshot_of_every_tile(staff, lab) -> None:
    communicator = _communicator(staff)
    connected, _ = await communicator.connect()
    assert connected
    snapshot = await communicator.receive_json_from()
    assert snapshot["type"] == "snapshot"
    assert {t["name"]: t["state"] for t in snapshot["tiles"]} == {"LASER 1": "offline", "PRINTER 1": "offline"}
    assert "now" in snapshot
    await communicator.disconnect()


async def test_it_rejects_anonymous_users() -> None:
    from django.contrib.auth.models import AnonymousUser

    for user in (None, AnonymousUser()):
        communicator = _communicator(user)
        connected, code = await communicator.connect()
        assert (connected, code) == (False, CLOSE_FORBIDDEN)


async def test_it_rejects_members_without_portal_access_and_inactive_staff(lab) -> None:
    inactive = await database_sync_to_async(_member)(is_staff=True, is_active=False)
    for user in (lab.normal, lab.admin, inactive):  # lab.admin authorizes all on boards, but is not portal staff
        connected, code = await _communicator(user).connect()
        assert (connected, code) == (False, CLOSE_FORBIDDEN)


async def test_it_forwards_machine_updates_sent_to_the_group(staff) -> None:
    communicator = await _connected(staff)
    tile = {"id": 7, "name": "X", "state": "free"}
    await get_channel_layer().group_send(GROUP, {"type": "machine.update", "tile": tile})
    assert await communicator.receive_json_from() == {"type": "machine.update", "tile": tile}
    await communicator.disconnect()


async def test_it_forwards_heartbeats(staff) -> None:
    communicator = await _connected(staff)
    now = timezone.now()
    await database_sync_to_async(events.send)([events.heartbeat(1, now)])
    assert await communicator.receive_json_from() == {
        "type": "machine.heartbeat",
        "id": 1,
        "last_seen": now.isoformat(),
    }
    await communicator.disconnect()


async def test_it_pushes_the_tile_the_bridge_broadcasts(staff, lab) -> None:
    communicator = await _connected(staff)

    def start_use() -> None:
        now = timezone.now()
        Machine.objects.filter(pk=1).update(last_seen=now)
        Use.objects.create(member=lab.normal, machine=lab.laser, started_at=now - timedelta(seconds=3), last_seen=now)
        events.push_machines([1])

    await database_sync_to_async(start_use)()
    message = await communicator.receive_json_from()
    assert message["type"] == "machine.update"
    assert (message["tile"]["id"], message["tile"]["state"], message["tile"]["user"]) == (1, "in_use", "Nina")
    await communicator.disconnect()


async def test_it_stops_sending_to_a_closed_dashboard(staff) -> None:
    first, second = await _connected(staff), await _connected(staff)
    await first.disconnect()
    await get_channel_layer().group_send(GROUP, {"type": "machine.heartbeat", "id": 1, "last_seen": "x"})
    assert (await second.receive_json_from())["type"] == "machine.heartbeat"
    assert await first.receive_nothing()
    await second.disconnect()


async def test_it_authenticates_through_the_session_cookie_of_the_real_stack(staff) -> None:
    client = Client()
    await database_sync_to_async(client.force_login)(staff)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    communicator = WebsocketCommunicator(
        application,
        "/ws/dashboard/",
        headers=[(b"cookie", cookie), (b"host", b"testserver"), (b"origin", b"http://testserver")],
    )
    connected, _ = await communicator.connect()
    assert connected
    assert (await communicator.receive_json_from())["type"] == "snapshot"
    await communicator.disconnect()

    anonymous = WebsocketCommunicator(
        application, "/ws/dashboard/", headers=[(b"host", b"testserver"), (b"origin", b"http://testserver")]
    )
    connected, _ = await anonymous.connect()
    assert not connected


async def test_it_carries_a_tile_from_another_process_through_the_real_redis_layer(staff, lab, redis, settings) -> None:
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [redis.url], "prefix": f"test{os.getpid()}"},
        }
    }
    dashboards = [await _connected(staff) for _ in range(3)]

    def open_use() -> None:
        now = timezone.now()
        Machine.objects.filter(pk=1).update(last_seen=now)
        Use.objects.create(member=lab.normal, machine=lab.laser, started_at=now, last_seen=now)

    await database_sync_to_async(open_use)()
    # A second process (as mqtt_listen is) computes the tile and publishes it through its own layer.
    env = {
        **os.environ,
        "REDIS_URL": redis.url,
        "CHANNELS_PREFIX": f"test{os.getpid()}",
        "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
    }
    code = "from machines.dashboard import events; events.push_machines([1])"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "manage.py", "shell", "-c", code, cwd=ROOT, env=env, stderr=subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    for dashboard in dashboards:
        message = await dashboard.receive_json_from(timeout=5)
        tile = message["tile"]
        assert (message["type"], tile["state"], tile["user"]) == ("machine.update", "in_use", "Nina")
        await dashboard.disconnect()


async def test_it_shares_one_snapshot_read_between_dashboards_connecting_together(staff, monkeypatch) -> None:
    from machines.dashboard import consumers

    reads = []
    real = consumers._snapshot

    def counted() -> dict[str, Any]:
        reads.append(1)
        return real()

    monkeypatch.setattr(consumers, "_snapshot", counted)
    dashboards = await asyncio.gather(*(_connected(staff) for _ in range(8)))
    assert 1 <= len(reads) < 8
    for dashboard in dashboards:
        await dashboard.disconnect()


async def test_it_never_hands_a_new_dashboard_a_snapshot_older_than_its_connection(staff, lab) -> None:
    first = await _connected(staff)
    await database_sync_to_async(Machine.objects.filter(pk=2).update)(last_seen=timezone.now())  # no event sent
    second = _communicator(staff)
    assert (await second.connect())[0]
    tiles = {t["id"]: t["state"] for t in (await second.receive_json_from())["tiles"]}
    assert tiles[2] == "free"
    await first.disconnect()
    await second.disconnect()


async def test_it_pushes_a_portal_edit_once_it_commits(staff, lab) -> None:
    from django.db import transaction

    communicator = await _connected(staff)

    def block_the_printer() -> None:
        with transaction.atomic():
            Machine.objects.filter(pk=2).update(blocked=True)
            events.push_on_commit([2])

    await database_sync_to_async(block_the_printer)()
    message = await communicator.receive_json_from()
    assert (message["tile"]["id"], message["tile"]["state"]) == (2, "blocked")
    await communicator.disconnect()


# --- Origins: only pages of the portal itself --------------------------------------------------------------


def _session_cookie(member: Member) -> str:
    client = Client()
    client.force_login(member)
    return f"sessionid={client.cookies['sessionid'].value}"


@pytest.mark.parametrize(
    ("scheme", "host", "origin", "accepted"),
    [
        ("ws", "localhost:8000", "http://localhost:8000", True),
        ("wss", "localhost:23336", "https://localhost:23336", True),
        ("wss", "localhost", "https://localhost", True),  # default port, written or not
        ("wss", "localhost:443", "https://localhost", True),
        ("ws", "localhost:8000", "http://localhost:8080", False),  # another port of the same host
        ("wss", "localhost:23336", "http://localhost:23336", False),  # another scheme
        ("ws", "localhost:8000", "http://evil.example", False),
        ("ws", "evil.example:8000", "http://evil.example:8000", False),  # a host not in ALLOWED_HOSTS
        ("ws", "localhost:8000", "null", False),
        ("ws", "localhost:8000", None, False),
        ("ws", "intranet.lab:8000", "https://fablab.example.org", True),  # PUBLIC_URL
        ("ws", "intranet.lab:8000", "https://fablab.example.org:8443", False),
    ],
)
async def test_it_accepts_only_its_own_origin(staff, settings, scheme, host, origin, accepted) -> None:
    settings.ALLOWED_HOSTS = ["localhost", "intranet.lab"]
    settings.PUBLIC_URL = "https://fablab.example.org"
    cookie = await database_sync_to_async(_session_cookie)(staff)
    headers = [(b"cookie", cookie.encode()), (b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    communicator = WebsocketCommunicator(application, "/ws/dashboard/", headers=headers)
    communicator.scope["scheme"] = scheme
    connected, _ = await communicator.connect()
    assert connected is accepted
    await communicator.disconnect()


async def test_a_page_on_another_port_of_the_same_host_cannot_open_the_dashboard(staff) -> None:
    """Over real HTTP: daphne as served, the viewer's own session cookie, a page's Origin on another port."""
    import websockets
    from websockets.exceptions import InvalidStatus
    from websockets.typing import Origin

    from .browser import daphne, server_env

    cookie = await database_sync_to_async(_session_cookie)(staff)
    env = server_env(connection.settings_dict["NAME"], redis_url="")
    env["SECRET_KEY"] = django_settings.SECRET_KEY  # the session was signed here
    with daphne(env) as server:
        url = f"ws://127.0.0.1:{server.port}/ws/dashboard/"
        for origin in (f"http://127.0.0.1:{server.port + 1}", f"http://localhost:{server.port}"):
            with pytest.raises(InvalidStatus) as refused:
                await websockets.connect(url, origin=Origin(origin), additional_headers={"Cookie": cookie})
            assert refused.value.response.status_code == 403
        async with websockets.connect(
            url, origin=Origin(f"http://127.0.0.1:{server.port}"), additional_headers={"Cookie": cookie}
        ) as socket:
            assert json.loads(await asyncio.wait_for(socket.recv(), 10))["type"] == "snapshot"


async def test_the_dashboard_goes_live_over_the_https_of_make_run(staff, tmp_path) -> None:
    """scripts/web.sh serves TLS itself, and daphne puts no scheme in a websocket's scope: a page opened by any of
    the portal's addresses (make run prints the host name and each LAN address) gets its live dashboard."""
    import ssl

    import websockets
    from websockets.exceptions import InvalidStatus
    from websockets.typing import Origin

    from .browser import server_env
    from .services import free_port, wait_for_port

    cookie = await database_sync_to_async(_session_cookie)(staff)
    port = free_port()
    env = {
        **server_env(connection.settings_dict["NAME"], redis_url=""),
        "SECRET_KEY": django_settings.SECRET_KEY,
        "FABOMATIC_DATA_DIR": str(tmp_path),  # its self-signed certificate
        "WEB_PORT": str(port),
        "BIND": "127.0.0.1",
        "PUBLIC_URL": "https://fabpi.local:23336",  # not the address used: the socket's own origin lets it in
    }
    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    web = subprocess.Popen([str(ROOT / "scripts" / "web.sh")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        await asyncio.to_thread(wait_for_port, port, 30)
        for host in ("127.0.0.1", "localhost"):
            async with websockets.connect(
                f"wss://{host}:{port}/ws/dashboard/",
                origin=Origin(f"https://{host}:{port}"),
                additional_headers={"Cookie": cookie},
                ssl=tls,
            ) as socket:
                assert json.loads(await asyncio.wait_for(socket.recv(), 10))["type"] == "snapshot"
        with pytest.raises(InvalidStatus) as refused:  # a page on another port of the same host still cannot
            await websockets.connect(
                f"wss://127.0.0.1:{port}/ws/dashboard/",
                origin=Origin(f"https://127.0.0.1:{port + 1}"),
                additional_headers={"Cookie": cookie},
                ssl=tls,
            )
        assert refused.value.response.status_code == 403
    finally:
        web.terminate()
        web.wait(timeout=10)


# --- Revocation: an open socket closes when its member loses access ---------------------------------------


async def _closed(communicator: WebsocketCommunicator) -> int | None:
    output = await communicator.receive_output(timeout=5)
    return output["code"] if output["type"] == "websocket.close" else None


@pytest.mark.parametrize("revoke", ["not_staff", "inactive", "erased", "deleted"])
async def test_it_closes_the_dashboard_of_a_member_who_loses_access(staff, revoke) -> None:
    from members.gdpr import erase_member

    communicator = await _connected(staff)
    other = await _connected(await database_sync_to_async(_member)(is_staff=True))

    def apply() -> None:
        member = staff.__class__.objects.get(pk=staff.pk)
        if revoke == "not_staff":
            member.is_staff = False
            member.save()
        elif revoke == "inactive":
            member.is_active = False
            member.save()
        elif revoke == "erased":
            erase_member(member)
        else:
            member.delete()

    await database_sync_to_async(apply)()
    assert await _closed(communicator) == CLOSE_FORBIDDEN
    assert await other.receive_nothing()  # the others' dashboards stay open
    await get_channel_layer().group_send(GROUP, {"type": "machine.heartbeat", "id": 1, "last_seen": "x"})
    assert (await other.receive_json_from())["type"] == "machine.heartbeat"
    await other.disconnect()


async def test_an_edit_that_keeps_access_keeps_the_dashboard_open(staff) -> None:
    communicator = await _connected(staff)

    def rename() -> None:
        member = staff.__class__.objects.get(pk=staff.pk)
        member.first_name = "Renamed"
        member.save()

    await database_sync_to_async(rename)()
    assert await communicator.receive_nothing(timeout=0.5)
    tile = {"id": 1, "name": "X", "state": "free"}
    await get_channel_layer().group_send(GROUP, {"type": "machine.update", "tile": tile})
    assert (await communicator.receive_json_from())["tile"] == tile
    await communicator.disconnect()


async def test_a_new_password_closes_the_dashboards_of_the_old_session(staff) -> None:
    """Through the real session stack: the session's hash no longer matches once the password changes."""
    cookie = await database_sync_to_async(_session_cookie)(staff)
    communicator = WebsocketCommunicator(
        application,
        "/ws/dashboard/",
        headers=[(b"cookie", cookie.encode()), (b"host", b"testserver"), (b"origin", b"http://testserver")],
    )
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from())["type"] == "snapshot"

    def new_password() -> None:
        member = staff.__class__.objects.get(pk=staff.pk)
        member.set_password("a-brand-new-password-7")
        member.save()

    await database_sync_to_async(new_password)()
    assert await _closed(communicator) == CLOSE_FORBIDDEN
