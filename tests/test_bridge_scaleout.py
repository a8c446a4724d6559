"""Scale-out: two ``mqtt_listen`` processes share one Mosquitto (MQTT 5 shared subscription) and one PostgreSQL.

Every request is answered exactly once, and the state stays consistent even when a board's duplicates are handled by
the two bridges at the same time (one use per session, machine hours counted once).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest

from . import pgserver
from .boards import SimBoard
from .services import ROOT, Broker

pytestmark = pytest.mark.broker

BOARDS = 12
SESSIONS = 3
DURATION = 50  # no time passes in this test: a duration within the bridge's 60 s clock slack is plausible
UID = "aabbcc{:02x}"
WAIT = 5.0  # generous: this checks exactly-once, not speed (the benchmark measures speed)


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free port, its data and unix socket in a temp dir."""
    try:
        cluster = pgserver.start({"fsync": "off", "synchronous_commit": "off"}, prefix="pg-scaleout-")
    except pgserver.Unavailable as exc:
        pytest.skip(str(exc))
    try:
        yield cluster.url()
    finally:
        cluster.stop()


SEED = f"""
from machines.models import Machine, MachineType
from members.models import Card, Member, Role
t = MachineType.objects.create(name="T", requires_authorization=False)
role = Role.objects.create(name="USER")
for i in range(1, {BOARDS} + 1):
    Machine.objects.create(id=i, name=f"M{{i}}", type=t)
    m = Member.objects.create_user(email=f"m{{i}}@x.test", first_name=f"M{{i}}", role=role)
    Card.objects.create(uid="{UID}".format(i), member=m)
"""


def ask_many(board: SimBoard, payload: dict[str, Any], copies: int) -> list[dict[str, Any]]:
    """Send ``copies`` identical requests back to back (the two bridges may take them at once); one reply each."""
    assert board.replies.empty(), f"unsolicited reply pending: {board.replies.queue[0]!r}"
    for _ in range(copies):
        board.send(payload)
    replies = []
    for _ in range(copies):
        try:
            replies.append(json.loads(board.replies.get(timeout=WAIT)))
        except queue.Empty:
            raise AssertionError(f"{len(replies)} of {copies} replies to {payload!r}") from None
    return replies


def sessions(board: SimBoard, machine_id: int) -> int:
    """The firmware's sequence, with duplicated startuse/inuse/stopuse; returns the number of requests sent."""
    uid = UID.format(machine_id)
    sent = 0
    for _ in range(SESSIONS):
        steps: list[tuple[dict[str, Any], int]] = [
            ({"action": "checkmachine"}, 1),
            ({"action": "checkuser", "uid": uid}, 1),
            ({"action": "startuse", "uid": uid}, 2),
            ({"action": "inuse", "uid": uid, "duration": 30}, 2),
            ({"action": "checkmachine"}, 1),
            ({"action": "stopuse", "uid": uid, "duration": DURATION}, 2),
        ]
        for payload, copies in steps:
            for reply in ask_many(board, payload, copies):
                assert reply["request_ok"] is True, (payload, reply)
            sent += copies
    return sent


def _tail(log: Any) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-3000:]


def test_two_bridges_answer_every_request_exactly_once(postgres: str, broker: Broker, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": postgres,
        "MQTT_BROKER_URL": broker.url,
        "MQTT_TOPIC": "machine",
        "MQTT_SHARED_SUBSCRIPTION": "1",
        "REDIS_URL": "",
        "SECRET_KEY": "x",
        "DEBUG": "0",
        "LOG_DIR": "",
        "FABOMATIC_ENV_FILE": "/nonexistent",
        "FABOMATIC_DATA_DIR": str(tmp_path),
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    subprocess.run([*manage, "shell", "-c", SEED], cwd=ROOT, env=env, check=True)
    tag = uuid.uuid4().hex[:6]
    log = tempfile.TemporaryFile()
    bridges = [
        subprocess.Popen(
            [*manage, "mqtt_listen", "--client-id", f"scale-{n}-{tag}"],
            cwd=ROOT,
            env={**env, "FABOMATIC_PROCESS": "bridge"},  # as deployed: only the bridge's apps
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        for n in range(2)
    ]
    boards = [SimBoard(broker.port, i) for i in range(1, BOARDS + 1)]
    stats: queue.Queue[tuple[str, dict]] = queue.Queue()
    watcher = SimBoard(broker.port, 0, topic="unused")

    def on_stats(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic.endswith(tag):
            stats.put((message.topic, json.loads(message.payload)))

    watcher.client.on_message = on_stats
    watcher.client.subscribe("stats/#")
    try:
        # Both bridges up and subscribed: each board's first checkmachine is answered (by either).
        up: set[str] = set()
        while len(up) < 2:
            topic, payload = stats.get(timeout=60)
            if payload.get("Connected"):
                up.add(topic)
        for board in boards:
            for _ in range(60):
                board.send({"action": "checkmachine"})
                try:
                    board.replies.get(timeout=1)
                    break
                except queue.Empty:
                    continue
        with ThreadPoolExecutor(max_workers=BOARDS) as pool:
            sent = sum(pool.map(sessions, boards, range(1, BOARDS + 1)))
        assert sent == BOARDS * SESSIONS * 9
        for board in boards:
            board.assert_no_reply({"action": "alive", "version": "v1", "ip": "10.0.0.1", "serial": "", "heap": "1"})
        for bridge in bridges:
            bridge.terminate()
        for bridge in bridges:
            assert bridge.wait(30) == 0, _tail(log)
        final: dict[str, dict] = {}
        while not stats.empty():
            topic, payload = stats.get()
            final[topic] = payload
        assert {t for t, s in final.items() if not s["Connected"]} == up  # both stopped cleanly
        received = [final[t]["Received"] for t in up]
        assert all(r > 0 for r in received), f"load not shared: {received}"
        assert sum(final[t]["Sent"] for t in up) >= sent  # plus the warm-up checkmachines
        assert sum(final[t]["Errors"] + final[t]["Late"] for t in up) == 0, _tail(log)
    finally:
        for board in [*boards, watcher]:
            board.close()
        for bridge in bridges:
            if bridge.poll() is None:
                bridge.kill()
                bridge.wait(10)
    with psycopg.connect(postgres) as db:
        uses = db.execute(
            "SELECT machine_id, count(*), count(ended_at), min(duration), max(duration) FROM machines_use"
            " GROUP BY machine_id ORDER BY machine_id"
        ).fetchall()
        hours = db.execute("SELECT id, hours FROM machines_machine ORDER BY id").fetchall()
        counted = db.execute("SELECT count(*) FROM telemetry_board").fetchone()
        assert counted is not None  # count(*) always returns a row
        boards_seen = counted[0]
    # One use per session (the duplicates recorded nothing), all closed with the board's duration...
    assert uses == [(i, SESSIONS, SESSIONS, DURATION, DURATION) for i in range(1, BOARDS + 1)]
    # ...and each counted once on the hour meter.
    assert [(i, round(h * 3600)) for i, h in hours] == [(i, SESSIONS * DURATION) for i in range(1, BOARDS + 1)]
    assert boards_seen == BOARDS
