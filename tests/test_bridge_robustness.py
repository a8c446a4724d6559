"""The bridge survives its environment: broker restarts, SIGTERM, any payload."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machines.models import Use
from telemetry import ingest
from telemetry import protocol as p
from telemetry.mqtt import Bridge

from .boards import SimBoard, reconnect_delay, time_passes
from .conftest import Lab
from .services import ROOT, Broker, free_port

pytestmark = pytest.mark.django_db(transaction=True)


def ask_until_answered(board: SimBoard, payload: dict, attempts: int = 40) -> dict:
    """While something restarts, requests go unanswered: retry like the board's 30 s tick would."""
    for _ in range(attempts):
        board.wait_ready()
        board.send(payload)
        try:
            return json.loads(board.replies.get(timeout=0.5))
        except Exception:
            continue
    raise AssertionError("never answered")


@pytest.fixture
def restartable_bridge(own_broker: Broker, settings) -> Iterator[Bridge]:
    settings.MQTT = {**settings.MQTT, "HOST": "127.0.0.1", "PORT": own_broker.port, "TOPIC": "machine"}
    bridge = Bridge(client_id=f"test-bridge-{uuid.uuid4().hex[:8]}")
    reconnect_delay(bridge.client, 0.1, 0.5)
    bridge.start()
    assert bridge.subscribed.wait(10)
    yield bridge
    bridge.stop()


@pytest.mark.broker
def test_it_reconnects_and_resubscribes_after_a_broker_restart(
    lab: Lab, own_broker: Broker, restartable_bridge: Bridge
) -> None:
    board = SimBoard(own_broker.port, 1)
    try:
        assert board.ask({"action": "checkmachine"})["name"] == "LASER 1"
        own_broker.restart()
        assert restartable_bridge.subscribed.wait(20), "bridge did not resubscribe"
        assert ask_until_answered(board, {"action": "checkuser", "uid": "aabbccd3"})["is_valid"] is True
    finally:
        board.close()


def spawn_bridge(broker: Broker, name: str, **env: str) -> subprocess.Popen:
    """``manage.py mqtt_listen`` as a process of its own on the test database, its output captured."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
        "MQTT_BROKER_URL": broker.url,
        "MQTT_CLIENT_ID": f"{name}-{uuid.uuid4().hex[:8]}",
        "FABOMATIC_PROCESS": "bridge",  # as the Procfile and the systemd unit start it: only the bridge's apps
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "manage.py", "mqtt_listen"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.broker
def test_sigterm_finishes_and_exits_zero(lab: Lab, broker: Broker) -> None:
    proc = spawn_bridge(broker, "sigterm")
    board = SimBoard(broker.port, 1)
    try:
        assert ask_until_answered(board, {"action": "startuse", "uid": "aabbccd3"})["request_ok"] is True
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, output.decode()
        assert b"Bridge stopped." in output
    finally:
        board.close()
        if proc.poll() is None:
            proc.kill()
    assert Use.objects.filter(member=lab.normal, ended_at__isnull=True).count() == 1


@pytest.mark.broker
def test_it_keeps_answering_and_recording_when_redis_is_down(lab: Lab, broker: Broker) -> None:
    """The live dashboard's channel layer (Redis) is unreachable: boards are still answered and uses recorded."""
    proc = spawn_bridge(broker, "noredis", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    board = SimBoard(broker.port, 1)
    try:
        assert ask_until_answered(board, {"action": "checkmachine"})["name"] == "LASER 1"
        # Each state change triggers a dashboard broadcast that cannot be delivered; the replies still come within
        # the board's 2 s (SimBoard.ask's timeout), in order.
        assert board.ask({"action": "startuse", "uid": "aabbccd3"})["request_ok"] is True
        for duration in (30, 60):
            assert board.ask({"action": "checkmachine"})["allowed"] is True
            assert board.ask({"action": "inuse", "uid": "aabbccd3", "duration": duration})["request_ok"] is True
        time_passes(65)  # the session must have lasted what the board reports
        assert board.ask({"action": "stopuse", "uid": "aabbccd3", "duration": 65})["request_ok"] is True
        assert board.ask({"action": "startuse", "uid": "aabbccd1"})["request_ok"] is True
        assert proc.poll() is None, "the bridge died"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, output.decode()
        assert b"live update for machines [1] failed" in output  # the broadcasts were tried, and failed
    finally:
        board.close()
        if proc.poll() is None:
            proc.kill()
    closed = Use.objects.get(member=lab.normal)
    assert closed.ended_at is not None
    assert (closed.duration, closed.ended_at - closed.started_at) == (65, timedelta(seconds=65))
    assert Use.objects.filter(member=lab.admin, ended_at__isnull=True).count() == 1


requests = st.one_of(
    st.builds(p.CheckMachine),
    st.builds(p.CheckUser, uid=st.sampled_from(["aabbccd1", "aabbccd3", "aabbccd5", "deadbeef", "00000000"])),
    st.builds(p.StartUse, uid=st.sampled_from(["aabbccd1", "aabbccd3", "aabbccd5", "deadbeef"]), replay=st.booleans()),
    st.builds(p.InUse, uid=st.sampled_from(["aabbccd3", "aabbccd4", "deadbeef"]), duration=st.integers(0, 10**7)),
    st.builds(
        p.StopUse,
        uid=st.sampled_from(["aabbccd1", "aabbccd3", "00000000", "deadbeef"]),
        duration=st.integers(0, 10**7),
        replay=st.booleans(),
    ),
    st.builds(p.Maintenance, uid=st.sampled_from(["aabbccd1", "aabbccd3"]), replay=st.booleans()),
    st.builds(p.Alive, version=st.text(max_size=100), ip=st.none(), serial=st.text(max_size=32), heap=st.none()),
    st.builds(p.SyncCache, offset=st.integers(0, 100)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(machine_id=st.sampled_from([1, 2, 99]), batch=st.lists(requests, max_size=6))
def test_fuzz_handle_message_never_raises_and_keeps_one_open_use(lab: Lab, machine_id: int, batch: list) -> None:
    for request in batch:
        reply = ingest.handle_message(machine_id, request)
        if isinstance(request, p.Alive):
            assert reply is None
        else:
            assert reply is not None and isinstance(reply["request_ok"], bool)
            assert len(p.encode(reply)) <= p.MAX_REPLY_BYTES
    for machine in (1, 2):
        assert Use.objects.filter(machine_id=machine, ended_at__isnull=True).count() <= 1
    assert not Use.objects.filter(machine_id=99).exists()
    time.sleep(0)
