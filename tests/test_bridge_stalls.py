"""A reply during database stalls, never silence (integrity issue, item 5).

A board waits 2 s for the one reply to each request; silence makes it disconnect and show "unresponsive". Whatever
the database does, every request gets exactly one reply within that time: the real answer, or ``request_ok: false``
("cannot decide", the board falls back to its cache) when the database cannot give one by the bridge's deadline.
One machine's locked row, a stalled write or a database server that stopped answering must not silence the others.

Everything goes through a real Mosquitto with simulated boards (``SimBoard.ask`` asserts one reply within the
board's 2 s, and the reply's shape is checked against its request so a late reply to an earlier request cannot pass
for the answer); extra replies are counted at the end of each phase. The stalls are real: a row held ``FOR UPDATE``
on a throwaway PostgreSQL cluster, a TCP server that never answers posing as PostgreSQL, an exclusive SQLite lock.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from machines.models import Machine, MachineType, Use
from members.models import Card, Member, Role
from telemetry import protocol as p
from telemetry.mqtt import Bridge

from . import pgserver
from .boards import SimBoard
from .services import ROOT, Broker

pytestmark = pytest.mark.broker

MACHINES = range(1, 7)
UID = "aabbcc{:02x}"  # the card of machine i's member
DURATION = 50  # no time passes in these tests: within the bridge's 60 s clock slack, a plausible duration
PAUSE = 0.05  # between a board's requests
SETTLE = 2.5  # longer than any reply can take (the deadline is 1.5 s): a second reply would be here by then
READS = {"checkmachine", "checkuser"}


def session(machine_id: int, duration: int = DURATION) -> list[dict[str, Any]]:
    """The firmware's sequence for one use: configuration, swipe, start, a heartbeat, stop."""
    uid = UID.format(machine_id)
    return [
        {"action": "checkmachine"},
        {"action": "checkuser", "uid": uid},
        {"action": "startuse", "uid": uid},
        {"action": "inuse", "uid": uid, "duration": 20},
        {"action": "stopuse", "uid": uid, "duration": duration},
    ]


def answered(machine_id: int, payload: dict[str, Any], reply: dict[str, Any]) -> bool:
    """True for the real answer to ``payload``, False for "cannot decide"; anything else (the reply to another
    request, another machine's, a refusal) fails the test."""
    request = p.parse_payload(json.dumps(payload).encode())
    if reply == p.unavailable_reply(request):
        return False
    action = payload["action"]
    if action == "checkmachine":
        ok = reply.get("request_ok") is True and reply.get("name") == f"M{machine_id}" and reply.get("allowed") is True
    elif action == "checkuser":
        expected = {"request_ok": True, "is_valid": True, "name": f"M{machine_id}", "missing_auth": False, "level": 1}
        ok = reply == expected
    elif action == "startuse":
        ok = reply == p.simple_reply(True)
    elif action == "inuse":
        ok = reply == p.simple_reply(True, "inUse")
    else:
        ok = reply == p.simple_reply(True, f"Duration {payload['duration']} seconds")
    assert ok, f"machine {machine_id}: {reply!r} does not answer {payload!r}"
    return True


Log = list[tuple[dict[str, Any], dict[str, Any]]]


def run_sessions(board: SimBoard, machine_id: int, until: float, min_rounds: int = 2) -> Log:
    """Sessions back to back until ``until`` (at least ``min_rounds``); every request and its one reply."""
    log: Log = []
    rounds = 0
    while rounds < min_rounds or time.monotonic() < until:
        for payload in session(machine_id):
            log.append((payload, board.ask(payload)))  # exactly one reply within the board's 2 s
            time.sleep(PAUSE)
        rounds += 1
    return log


def concurrently(boards: dict[int, SimBoard], seconds: float, min_rounds: int = 2) -> dict[int, Log]:
    """Every board runs sessions at the same time for ``seconds``; a board that got no reply fails the test."""
    until = time.monotonic() + seconds
    with ThreadPoolExecutor(max_workers=len(boards)) as pool:
        futures = {i: pool.submit(run_sessions, board, i, until, min_rounds) for i, board in boards.items()}
        return {i: future.result() for i, future in futures.items()}


def assert_no_extra_replies(boards: dict[int, SimBoard]) -> None:
    time.sleep(SETTLE)
    extra = {i: list(board.replies.queue) for i, board in boards.items() if not board.replies.empty()}
    assert not extra, f"replies nobody asked for (a request answered twice): {extra}"


def wait_until_answered(board: SimBoard, *, ok: bool, timeout: float = 60) -> dict[str, Any]:
    """Until the bridge is up and subscribed, requests are lost: ask like the board's 30 s tick would, until a
    checkmachine gets the expected kind of answer. Each wait outlasts the deadline, so nothing is left pending."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert board.replies.empty(), list(board.replies.queue)
        board.send({"action": "checkmachine"})
        try:
            reply = json.loads(board.replies.get(timeout=3))
        except queue.Empty:
            continue
        if reply["request_ok"] is ok:
            return reply
    raise AssertionError(f"machine {board.machine_id}: no checkmachine answered with request_ok {ok}")


# --- the bridge as a process of its own (mqtt_listen), on any DATABASE_URL --------------------------------------


def bridge_env(database_url: str, broker: Broker, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "MQTT_BROKER_URL": broker.url,
        "MQTT_TOPIC": "machine",
        "MQTT_CLIENT_ID": f"stall-{uuid.uuid4().hex[:8]}",
        "REDIS_URL": "",
        "SECRET_KEY": "x",
        "DEBUG": "0",
        "LOG_DIR": "",
        "FABOMATIC_ENV_FILE": "/nonexistent",
        "FABOMATIC_DATA_DIR": str(data_dir),
    }


class BridgeProcess:
    """``manage.py mqtt_listen``, its output in a temporary file (shown when an assertion about it fails)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.log: IO[bytes] = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "mqtt_listen"],
            cwd=ROOT,
            env={**env, "FABOMATIC_PROCESS": "bridge"},  # as deployed: only the bridge's apps
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def tail(self) -> str:
        return self.output()[-4000:]

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the bridge did not exit within {timeout} s of SIGTERM:\n{self.tail()}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


SEED = f"""
from machines.models import Machine, MachineType
from members.models import Card, Member, Role
t = MachineType.objects.create(name="T", requires_authorization=False)
role = Role.objects.create(name="USER")
for i in {list(MACHINES)}:
    Machine.objects.create(id=i, name=f"M{{i}}", type=t)
    m = Member.objects.create_user(email=f"m{{i}}@x.test", first_name=f"M{{i}}", role=role)
    Card.objects.create(uid="{UID}".format(i), member=m)
"""


@pytest.fixture
def boards(broker: Broker) -> Iterator[dict[int, SimBoard]]:
    """Boards on machines 1–6."""
    made: dict[int, SimBoard] = {}
    try:
        for i in MACHINES:
            made[i] = SimBoard(broker.port, i)
        yield made
    finally:
        for board in made.values():
            board.close()


# --- 1. PostgreSQL: one machine's row held FOR UPDATE ------------------------------------------------------------


@pytest.fixture
def postgres() -> Iterator[pgserver.Cluster]:
    try:
        cluster = pgserver.start({"fsync": "off", "synchronous_commit": "off"}, prefix="pg-stalls-")
    except pgserver.Unavailable as exc:
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


HOLD = 8.0  # seconds the boards work while the row is locked (it is released once they are done)


@pytest.mark.parametrize(
    "locked",
    [
        pytest.param(1, id="lowest-id"),
        pytest.param(6, id="highest-id"),  # the stamp flush once held lower ids' rows while it waited for this one
    ],
)
def test_a_row_locked_on_postgresql_holds_up_only_its_own_machines_writes(
    locked: int, postgres: pgserver.Cluster, broker: Broker, boards: dict[int, SimBoard], tmp_path: Path
) -> None:
    """Another session holds ``SELECT … FOR UPDATE`` on one machine's row while six boards run sessions for 8 s.

    Before the rework one bridge worker waited on the lock with no timeout and 18 of 24 requests from six boards got
    no reply, read-only ones included. Now: the other machines are answered normally; the locked machine's queries
    are answered from the database (they need no lock) and its writes, which need its row, get "cannot decide";
    nobody waits for nothing. Released, the machine works normally, and nothing was recorded for it meanwhile.
    """
    url = postgres.url()
    env = bridge_env(url, broker, tmp_path)
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    subprocess.run([*manage, "shell", "-c", SEED], cwd=ROOT, env=env, check=True)
    with psycopg.connect(url) as locker:
        bridge = BridgeProcess(env)
        try:
            for board in boards.values():  # the bridge is up, every machine online (its fast path available)
                wait_until_answered(board, ok=True)
            row = locker.execute("SELECT id FROM machines_machine WHERE id = %s FOR UPDATE", [locked]).fetchall()
            assert row == [(locked,)]
            try:
                logs = concurrently(boards, HOLD)
                assert_no_extra_replies(boards)  # and the locked machine's last write has failed, under the lock
            finally:
                locker.rollback()
            assert bridge.proc.poll() is None, "the bridge died"

            for i, log in logs.items():
                # The locked machine's queries need no lock: answered; its writes need its row: "cannot decide".
                # Every other machine: answered.
                wrong = [
                    (payload, reply)
                    for payload, reply in log
                    if answered(i, payload, reply) is not (i != locked or payload["action"] in READS)
                ]
                assert not wrong, f"machine {i} ({len(wrong)} of {len(log)}; row {locked} locked): {wrong}"
            # The row is free: a whole session on the machine is answered and recorded, and every machine answers.
            for payload in session(locked, duration=40):
                assert answered(locked, payload, boards[locked].ask(payload)), payload
            for i in MACHINES:
                assert answered(i, {"action": "checkmachine"}, boards[i].ask({"action": "checkmachine"}))
            assert_no_extra_replies(boards)
            assert bridge.terminate() == 0
        finally:
            print(bridge.tail())  # shown when the test fails
            bridge.close()

    with psycopg.connect(url) as db:
        query = (
            "SELECT machine_id, count(*), count(ended_at), min(duration), max(duration), sum(duration)"
            " FROM machines_use GROUP BY machine_id"
        )
        uses = {row[0]: row[1:] for row in db.execute(query)}
        hours: dict[int, float] = dict(db.execute("SELECT id, hours FROM machines_machine").fetchall())
    # The locked machine: only the session after the lock (its writes under the lock recorded nothing).
    assert uses[locked] == (1, 1, 40, 40, 40)
    assert round(hours[locked] * 3600) == 40
    # The others: every session they ran, each closed with the board's duration and counted once.
    for i in MACHINES:
        if i != locked:
            sessions = len(logs[i]) // 5
            assert uses[i] == (sessions, sessions, DURATION, DURATION, sessions * DURATION), i
            assert round(hours[i] * 3600) == sessions * DURATION, i


# --- 2. PostgreSQL that accepts TCP but never answers --------------------------------------------------------------


class SilentServer:
    """Accepts TCP connections and never sends a byte: a database server that hangs (or a black-holed proxy)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent-postgres", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent_postgres() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


def test_a_postgresql_server_that_never_answers_gets_request_ok_false_not_silence(
    silent_postgres: SilentServer, broker: Broker, tmp_path: Path
) -> None:
    """The database server accepts the connection and then says nothing: before the rework the bridge waited on it
    forever (no connect, statement or lock timeout) and every board went "unresponsive". Now each request gets
    ``request_ok: false`` within the board's 2 s, for as long as the server stays silent, and SIGTERM still stops
    the bridge."""
    bridge = BridgeProcess(bridge_env(f"postgres://x@127.0.0.1:{silent_postgres.port}/x", broker, tmp_path))
    machines = (1, 2)
    made: dict[int, SimBoard] = {}
    try:
        for i in machines:
            made[i] = SimBoard(broker.port, i)
        for board in made.values():
            wait_until_answered(board, ok=False)

        def ask_for(machine_id: int, seconds: float = 10.0) -> int:
            board, until, asked = made[machine_id], time.monotonic() + seconds, 0
            while asked == 0 or time.monotonic() < until:
                for payload in session(machine_id)[:3]:  # checkmachine, checkuser, startuse
                    reply = board.ask(payload)  # one reply within 2 s...
                    assert answered(machine_id, payload, reply) is False, reply  # ...and it is "cannot decide"
                    asked += 1
            return asked

        with ThreadPoolExecutor(max_workers=len(machines)) as pool:
            asked = list(pool.map(ask_for, machines))
        assert all(n >= 6 for n in asked), asked  # ~1.5 s a reply: at least two rounds in 10 s
        assert_no_extra_replies(made)
        assert silent_postgres.accepted, "the bridge never tried the database"
        assert bridge.proc.poll() is None, "the bridge died"
        assert bridge.terminate() == 0
        assert "Bridge stopped." in bridge.output()
    finally:
        print(bridge.tail())  # shown when the test fails
        for board in made.values():
            board.close()
        bridge.close()


# --- 3. SQLite: the database write-locked by another process -----------------------------------------------------


@pytest.fixture
def six_machines(db: None) -> None:
    t = MachineType.objects.create(name="T", requires_authorization=False)
    role = Role.objects.create(name="USER")
    for i in MACHINES:
        Machine.objects.create(id=i, name=f"M{i}", type=t)
        member = Member.objects.create_user(email=f"m{i}@x.test", first_name=f"M{i}", role=role)
        Card.objects.create(uid=UID.format(i), member=member)


SQLITE_HOLD = 4.0  # seconds the boards work while the database is write-locked


def drain(bridge: Bridge, timeout: float = 30) -> None:
    """Until the bridge has finished every request it took (answered or not)."""
    end = time.monotonic() + timeout
    while bridge.dispatcher.qsize() and time.monotonic() < end:
        time.sleep(0.05)
    assert bridge.dispatcher.qsize() == 0, "the bridge's workers are stuck"


def sessions_while_sqlite_is_locked(bridge: Bridge, boards: dict[int, SimBoard]) -> dict[int, Log]:
    """Another connection holds SQLite's write lock while six boards run sessions for 4 s; then the lock is released
    and the boards run one more session each. Checks everything but where the reads under the lock were answered
    from; returns what the boards got under the lock."""
    check = {"action": "checkmachine"}
    for i, board in boards.items():
        assert answered(i, check, board.ask(check))  # online: the fast path is available
    locker = sqlite3.connect(connection.settings_dict["NAME"], timeout=5)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        logs = concurrently(boards, SQLITE_HOLD)  # every request: one reply within the board's 2 s
        assert_no_extra_replies(boards)
        drain(bridge)  # every write taken under the lock has failed under it
        # With the workers free, queries are answered from the database (WAL) beside the writer.
        read_at = timezone.now()
        for i, board in boards.items():
            for payload in session(i)[:2]:  # checkmachine, checkuser
                assert answered(i, payload, board.ask(payload)), payload
    finally:
        locker.rollback()
        locker.close()

    for i, log in logs.items():
        for payload, reply in log:
            # The answer to this very request, or "cannot decide"; a write is never done under the lock.
            assert answered(i, payload, reply) is False or payload["action"] in READS, (i, payload, reply)
    assert not Use.objects.exists()
    # The heartbeat stamps of the queries under the lock were kept, and are written once it is released.
    end = time.monotonic() + 10
    while Machine.objects.filter(last_seen__lt=read_at).exists() and time.monotonic() < end:
        time.sleep(0.1)
    assert not Machine.objects.filter(last_seen__lt=read_at).exists(), "heartbeats taken under the lock were lost"
    # Released: a whole session on every machine is answered and recorded.
    for i, log in concurrently(boards, 0, min_rounds=1).items():
        assert all(answered(i, payload, reply) for payload, reply in log), (i, log)
    assert_no_extra_replies(boards)
    for i in MACHINES:
        use = Use.objects.get(machine_id=i)
        assert (use.duration, use.ended_at is not None, use.flag) == (DURATION, True, ""), i
        assert Machine.objects.get(pk=i).hours * 3600 == pytest.approx(DURATION)
    return logs


@pytest.mark.django_db(transaction=True)
def test_a_write_locked_sqlite_database_still_answers_every_request_once(
    six_machines: None, bridge: Bridge, boards: dict[int, SimBoard]
) -> None:
    """Before the rework a locked SQLite database held the single worker for the whole busy timeout per write (and
    per batched heartbeat write): requests queued past the board's timeout got no reply. Now every request gets one
    reply within 2 s, writes "cannot decide", queries are answered from the database (WAL) when a worker is free,
    the heartbeats are written later, and afterwards everything is recorded normally."""
    sessions_while_sqlite_is_locked(bridge, boards)


@pytest.mark.django_db(transaction=True)
def test_a_write_locked_sqlite_database_answers_every_query_from_the_database(
    six_machines: None, bridge: Bridge, boards: dict[int, SimBoard]
) -> None:
    """The same stall: queries need no write lock (WAL), so each checkmachine and checkuser under it gets the real
    answer, however many machines' writes are waiting out the busy timeout."""
    logs = sessions_while_sqlite_is_locked(bridge, boards)
    starved = [
        (i, payload)
        for i, log in logs.items()
        for payload, reply in log
        if payload["action"] in READS and not answered(i, payload, reply)
    ]
    assert not starved, f"queries answered request_ok false although the database could answer them: {starved}"
