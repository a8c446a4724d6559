"""Benchmark of the board bridge: simulated boards → real Mosquitto → ``manage.py mqtt_listen`` → SQLite.

    .venv/bin/python -m bench.bridge [--quick] [--boards 1000] [--duration 60] [--no-redis]

Starts its own Mosquitto (deploy/mosquitto/dev.conf: set_tcp_nodelay) and its own bridge process on a fresh SQLite
file, seeds 1,000 machines and 2,000 members, then measures:

1. single-board latency (one board, sequential requests);
2. (a) 20 boards in a closed loop (request, reply, next) with a session mix → replies/s and p50/p95/p99;
3. (b) 1,000 boards at the firmware's cadence (checkmachine every 30 s, inuse every 30 s while in use, alive every
   120 s, swipes) → timeouts (> 2 s) and p50/p95/p99;
4. (a) and (b) again after adding 1,000,000 closed uses to the history;
5. the bridge's RSS after the load.

Targets (2 cores, SQLite): (a) ≥ 1,000 replies/s with p99 < 50 ms; (b) 0 timeouts with p99 < 100 ms; the 1M-use
figures within 10 % of the empty ones; RSS < 80 MB. The simulated boards use a minimal asyncio MQTT client
(bench/mqttlite.py) so that the generator is not the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import mqttlite

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import Broker, mosquitto, redis_server  # noqa: E402  (the tests' throwaway servers, same config)

TIMEOUT = 2.0
MACHINES = 1000
MEMBERS = 2000


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    timeouts: int = 0
    elapsed: float = 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q / 100 * len(data)))] * 1000

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def line(self, label: str) -> str:
        return (
            f"{label:<34} replies={len(self.latencies):>7}  rate={self.rate:8.1f}/s  timeouts={self.timeouts:>4}  "
            f"p50={self.pct(50):6.1f} ms  p95={self.pct(95):6.1f} ms  p99={self.pct(99):6.1f} ms"
        )


class Board:
    """One simulated board: one request at a time, waiting up to 2 s for the reply (no correlation, like the board)."""

    def __init__(self, machine_id: int, uid: str, result: Result) -> None:
        self.machine_id = machine_id
        self.uid = uid
        self.topic = f"machine/{machine_id}"
        self.result = result
        self.waiter: asyncio.Future[bytes] | None = None
        self.client: mqttlite.LiteClient | None = None
        self.unsolicited = 0

    async def connect(self, port: int) -> None:
        self.client = await mqttlite.connect(
            "127.0.0.1", port, f"BOARD{self.machine_id}-{os.getpid()}", [f"{self.topic}/reply"], self._on_reply
        )

    def _on_reply(self, topic: str, payload: bytes) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(payload)
        else:
            self.unsolicited += 1

    async def ask(self, payload: dict) -> dict | None:
        assert self.client is not None
        self.waiter = asyncio.get_running_loop().create_future()
        start = time.perf_counter()
        self.client.publish(self.topic, json.dumps(payload).encode())
        try:
            raw = await asyncio.wait_for(self.waiter, TIMEOUT)
        except TimeoutError:
            self.result.timeouts += 1
            await asyncio.sleep(TIMEOUT)  # the board sleeps another 2 s after a timeout
            return None
        finally:
            self.waiter = None
        self.result.latencies.append(time.perf_counter() - start)
        return json.loads(raw)

    def send(self, payload: dict) -> None:
        assert self.client is not None
        self.client.publish(self.topic, json.dumps(payload).encode())

    def alive(self) -> None:
        self.send(
            {"action": "alive", "version": "bench,v1.0.4", "ip": "10.0.0.1", "serial": "aabbccddeeff", "heap": "1"}
        )


def uid_for(member: int) -> str:
    return f"{0x10000000 + member:08x}"


# --- set-up --------------------------------------------------------------------------------


def seed(db_path: Path) -> None:
    """Migrate and seed through Django in this process (the bridge runs in its own)."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from machines.models import Authorization, Machine, MachineType, MaintenancePlan
    from members.models import Card, Member, Role

    call_command("migrate", verbosity=0)
    mtype = MachineType.objects.create(name="Laser", logoff_minutes=1440, grace_minutes=2)
    Machine.objects.bulk_create([Machine(id=i, name=f"MACHINE {i}", type=mtype) for i in range(1, MACHINES + 1)])
    MaintenancePlan.objects.bulk_create(
        [
            MaintenancePlan(machine_id=i, hours_between=100000, description="Clean", lcd_message="pulire")
            for i in range(1, MACHINES + 1)
        ]
    )
    user = Role.objects.create(name="USER")
    staff = Role.objects.create(name="STAFF", maintenance=True)
    Member.objects.bulk_create(
        [
            Member(
                pk=i,
                first_name=f"Member{i}",
                email=f"m{i}@bench.test",
                password="!",
                role=staff if i % 50 == 0 else user,
            )
            for i in range(1, MEMBERS + 1)
        ]
    )
    Card.objects.bulk_create([Card(uid=uid_for(i), member_id=i) for i in range(1, MEMBERS + 1)])
    # Member m is authorized on machines m, m+1000 (mod 1000) and three more.
    auths = {(m, 1 + (m - 1 + k * 137) % MACHINES) for m in range(1, MEMBERS + 1) for k in range(5)}
    Authorization.objects.bulk_create([Authorization(member_id=m, machine_id=mc) for m, mc in auths])
    connection.close()


def add_history(db_path: Path, count: int) -> float:
    """Insert ``count`` closed uses spread over three years: one INSERT … SELECT over a recursive CTE (seconds)."""
    import sqlite3

    start = time.perf_counter()
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA cache_size = -300000")  # the random-order index inserts stay in memory (this process only)
    now = int(datetime.now(UTC).timestamp())
    span = 3 * 365 * 86400
    # Row i starts span·(1 − i/count) + 2 h ago and lasts 60–7,200 s (a cheap deterministic scramble).
    db.execute(
        """
        WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i + 1 < :count),
        rows(i, started, duration) AS (
            SELECT i, :now - (:span * (:count - i)) / :count - 7200, 60 + (i * 7919) % 7141 FROM seq
        )
        INSERT INTO machines_use (member_id, machine_id, started_at, ended_at, last_seen, duration, replay)
        SELECT 1 + i % :members, 1 + i % :machines,
               datetime(started, 'unixepoch'), datetime(started + duration, 'unixepoch'),
               datetime(started + duration, 'unixepoch'), duration, 0
        FROM rows
        """,
        {"count": count, "now": now, "span": span, "members": MEMBERS, "machines": MACHINES},
    )
    db.commit()
    db.close()
    return time.perf_counter() - start


def start_bridge(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "mqtt_listen", "--housekeeping", "60"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def pcts(r: Result) -> str:
    return f"p50 {r.pct(50):.1f} ms  p95 {r.pct(95):.1f} ms  p99 {r.pct(99):.1f} ms"


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    """The process's resident set (VmRSS) or its peak (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_load(label: str, coro_fn, bridge_pid: int, broker_pid: int) -> Result:
    """Run one load and print its line, with the CPU used by the generator (this process), bridge and broker."""
    own, bridge0, broker0 = time.process_time(), cpu_seconds(bridge_pid), cpu_seconds(broker_pid)
    result = asyncio.run(coro_fn())
    wall = result.elapsed or 1.0
    cpu = (
        f"cpu: generator {100 * (time.process_time() - own) / wall:.0f}%"
        f"  bridge {100 * (cpu_seconds(bridge_pid) - bridge0) / wall:.0f}%"
        f"  broker {100 * (cpu_seconds(broker_pid) - broker0) / wall:.0f}% of a core;  {load()}"
    )
    print(result.line(label), flush=True)
    print(f"{'':<34} {cpu}", flush=True)
    return result


# --- loads ---------------------------------------------------------------------------------


async def connect_all(boards: list[Board], port: int) -> None:
    for i in range(0, len(boards), 50):
        await asyncio.gather(*(b.connect(port) for b in boards[i : i + 50]))


async def wait_for_bridge(port: int) -> None:
    board = Board(1, uid_for(1), Result())
    await board.connect(port)
    for _ in range(120):
        if await asyncio.wait_for(asyncio.shield(_try(board)), 5):
            board.client.close()  # type: ignore[union-attr]
            return
    raise RuntimeError("the bridge never answered")


async def _try(board: Board) -> bool:
    board.result.timeouts = 0
    reply = await board.ask({"action": "checkmachine"})
    return reply is not None


async def single(port: int, count: int) -> Result:
    result = Result()
    board = Board(1, uid_for(1), result)
    await board.connect(port)
    start = time.perf_counter()
    for i in range(count):
        await board.ask({"action": "checkmachine"} if i % 2 else {"action": "checkuser", "uid": board.uid})
    result.elapsed = time.perf_counter() - start
    board.client.close()  # type: ignore[union-attr]
    return result


async def closed_loop(port: int, boards_n: int, seconds: float, first_machine: int) -> Result:
    """Each board repeats a session: checkmachine, checkuser, startuse, (checkmachine, inuse)×2, stopuse, alive."""
    result = Result()
    boards = [Board(first_machine + i, uid_for(first_machine + i), result) for i in range(boards_n)]
    await connect_all(boards, port)
    deadline = time.perf_counter() + seconds

    async def run(board: Board) -> None:
        while time.perf_counter() < deadline:
            await board.ask({"action": "checkmachine"})
            await board.ask({"action": "checkuser", "uid": board.uid})
            await board.ask({"action": "startuse", "uid": board.uid})
            for duration in (30, 60):
                await board.ask({"action": "checkmachine"})
                await board.ask({"action": "inuse", "uid": board.uid, "duration": duration})
            await board.ask({"action": "stopuse", "uid": board.uid, "duration": 65})
            board.alive()

    start = time.perf_counter()
    await asyncio.gather(*(run(b) for b in boards))
    result.elapsed = time.perf_counter() - start
    for b in boards:
        b.client.close()  # type: ignore[union-attr]
    return result


async def fleet(port: int, boards_n: int, seconds: float, seed_value: int) -> Result:
    """The firmware's cadence: a 30 s network tick (checkmachine, inuse if busy), alive every 120 s, swipes."""
    result = Result()
    rng = random.Random(seed_value)
    boards = [Board(i, uid_for(i), result) for i in range(1, boards_n + 1)]
    await connect_all(boards, port)
    start = time.perf_counter()
    deadline = start + seconds

    async def run(board: Board) -> None:
        await asyncio.sleep(rng.uniform(0, 30))
        in_use_since: float | None = None
        session_end = 0.0
        next_alive = time.perf_counter() + rng.uniform(0, 120)
        while time.perf_counter() < deadline:
            tick = time.perf_counter()
            await board.ask({"action": "checkmachine"})
            if in_use_since is not None:
                duration = int(tick - in_use_since)
                await board.ask({"action": "inuse", "uid": board.uid, "duration": duration})
                if tick >= session_end:
                    await board.ask({"action": "stopuse", "uid": board.uid, "duration": duration})
                    in_use_since = None
            elif rng.random() < 0.15:  # a swipe: checkuser, startuse, ~1 s later checkmachine
                await asyncio.sleep(rng.uniform(0, 10))
                await board.ask({"action": "checkuser", "uid": board.uid})
                await board.ask({"action": "startuse", "uid": board.uid})
                in_use_since = time.perf_counter()
                session_end = in_use_since + rng.uniform(30, 300)
                await asyncio.sleep(1)
                await board.ask({"action": "checkmachine"})
            if tick >= next_alive:
                board.alive()
                next_alive += 120
            await asyncio.sleep(max(0.0, tick + 30 - time.perf_counter()))

    await asyncio.gather(*(run(b) for b in boards))
    result.elapsed = time.perf_counter() - start
    unsolicited = sum(b.unsolicited for b in boards)
    if unsolicited:
        print(f"   !! {unsolicited} unsolicited replies")
    for b in boards:
        b.client.close()  # type: ignore[union-attr]
    return result


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bridge", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test of the benchmark itself)")
    parser.add_argument("--boards", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (b)")
    parser.add_argument("--closed", type=float, default=15.0, help="seconds of load (a)")
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument(
        "--no-redis",
        action="store_true",
        help="no channel layer (by default the bridge broadcasts dashboard updates to its own Redis, as deployed)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.closed, args.history = 35.0, 5.0, 100_000

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-bridge-"))
        broker = stack.enter_context(mosquitto())
        redis_url = "" if args.no_redis else stack.enter_context(redis_server()).url
        return _run(args, tmp, broker, redis_url)


def _run(args: argparse.Namespace, tmp: str, broker: Broker, redis_url: str) -> int:
    db_path = Path(tmp) / "bench.sqlite3"
    env = {
        **os.environ,
        "FABOMATIC_DATA_DIR": tmp,
        "FABOMATIC_ENV_FILE": "/nonexistent",
        "SECRET_KEY": "bench",
        "DEBUG": "0",
        "DATABASE_URL": f"sqlite:///{db_path}",
        "MQTT_BROKER_URL": broker.url,
        "MQTT_TOPIC": "machine",
        "MQTT_CLIENT_ID": "bench-bridge",
        "REDIS_URL": redis_url,
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "fabomatic.settings",
    }
    os.environ.update({k: env[k] for k in ("FABOMATIC_DATA_DIR", "FABOMATIC_ENV_FILE", "SECRET_KEY", "DATABASE_URL")})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fabomatic.settings")
    t = time.perf_counter()
    seed(db_path)
    print(f"seeded {MACHINES} machines, {MEMBERS} members in {time.perf_counter() - t:.1f} s", flush=True)
    bridge = start_bridge(env)
    try:
        asyncio.run(wait_for_bridge(broker.port))
        print(f"machine: {os.cpu_count()} cores, {sys.platform}; broker mosquitto with set_tcp_nodelay", flush=True)
        print(f"channel layer: {'Redis (pub/sub layer)' if redis_url else 'none (in-memory, nobody listens)'}")
        idle = rss_mb(bridge.pid)
        print(f"bridge RSS idle: {idle:.1f} MB;  {load()}", flush=True)
        broker_pid = broker.process.pid  # type: ignore[union-attr]
        rows = []
        for label, history in (("empty history", 0), (f"{args.history:,} uses", args.history)):
            if history:
                took = add_history(db_path, history)
                print(f"inserted {history:,} uses in {took:.1f} s", flush=True)
            single_r = run_load(
                f"single board [{label}]",
                lambda: single(broker.port, 300 if args.quick else 1000),
                bridge.pid,
                broker_pid,
            )
            a = run_load(
                f"(a) 20 boards closed loop [{label}]",
                lambda: closed_loop(broker.port, 20, args.closed, first_machine=1),
                bridge.pid,
                broker_pid,
            )
            b = run_load(
                f"(b) {args.boards} boards cadence [{label}]",
                lambda: fleet(broker.port, args.boards, args.duration, seed_value=history),  # noqa: B023
                bridge.pid,
                broker_pid,
            )
            rows.append((label, single_r, a, b))
        rss, peak = rss_mb(bridge.pid), rss_mb(bridge.pid, "VmHWM")
    finally:
        bridge.terminate()
        _out, err = bridge.communicate(timeout=30)
    print("\nSummary")
    for label, single_r, a, b in rows:
        print(f"  [{label}]")
        print(f"    single board       {pcts(single_r)}")
        print(f"    (a) 20 closed loop {a.rate:.0f} replies/s  {pcts(a)}")
        print(f"    (b) fleet          {b.timeouts} timeouts  {b.rate:.0f} replies/s  {pcts(b)}")
    (_, _, a0, b0), (_, _, a1, b1) = rows
    print(f"  1M-use / empty (a) throughput: {a1.rate / a0.rate:.2f}   (b) p99: {b1.pct(99) / b0.pct(99):.2f}")
    print(f"  bridge RSS idle {idle:.1f} MB, after load {rss:.1f} MB (peak {peak:.1f} MB)")
    print(f"  bridge exit code on SIGTERM: {bridge.returncode};  {load()}")
    ok = (
        a0.rate >= 1000
        and a0.pct(99) < 50
        and b0.timeouts == 0
        and b0.pct(99) < 100
        and b1.timeouts == 0
        and a1.rate >= 0.9 * a0.rate
        and a1.pct(99) < 50
        and b1.pct(99) < 100
        and peak < 80
    )
    print(f"  targets met: {'yes' if ok else 'NO'}")
    if err.strip():
        print("bridge stderr (tail):\n" + "\n".join(err.decode(errors="replace").splitlines()[-15:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
