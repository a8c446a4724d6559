"""Benchmark of the board bridge: simulated boards → real Mosquitto → ``manage.py mqtt_listen`` → SQLite / PostgreSQL.

    .venv/bin/python -m bench.bridge [--quick] [--only synthetic|imported|postgresql] [--no-fleet] [--boards 1000]
        [--duration 60] [--closed 15] [--history 1000000] [--imported-uses 200000] [--no-redis]
        [--pg-setting NAME=VALUE ...] [--pg-socket] [--pg-statements [--pg-waits]] [--bridge-env NAME=VALUE ...]

The last four are for profiling PostgreSQL: server settings of the throwaway cluster, the bridge on the unix
socket instead of TCP, pg_stat_statements around (a) (statements and round trips per reply), and the bridge's
environment (e.g. BRIDGE_WORKERS=1, or DJANGO_SETTINGS_MODULE=bench.settings_db with BENCH_DB for connection options).

Starts its own Mosquitto (deploy/mosquitto/dev.conf: set_tcp_nodelay), its own Redis (the dashboard's channel layer,
as deployed) and one ``mqtt_listen`` process per database, then measures on each:

- single-board latency (one board, sequential requests);
- (a) 20 boards in a closed loop (request, reply, next) with a session mix → replies/s and p50/p95/p99;
- (b) 1,000 boards at the firmware's cadence (checkmachine every 30 s, inuse every 30 s while in use, alive every
  120 s, swipes) → timeouts (> 2 s) and p50/p95/p99.

Datasets:

1. synthetic, SQLite: 1,000 machines and 2,000 members seeded through the ORM, empty history, then the same bridge
   again after adding 1,000,000 closed uses (one INSERT … SELECT);
2. "imported lab", SQLite and PostgreSQL: an old-FabOMatic 1.0.7 database of 1,000 machines, 2,000 members and
   200,000 uses (bench/legacy_lab.py), brought over the way a lab does it (``migrate``, ``bootstrap``,
   ``import_fabomatic``) into a fresh SQLite file and into a throwaway PostgreSQL cluster started here (initdb on a
   free port, stock settings, removed afterwards; tests/pgserver.py). After the import PostgreSQL gets
   VACUUM (ANALYZE), what autovacuum does within its first minute; SQLite gets nothing (nobody runs ANALYZE there).

Targets (2 cores), for every engine and dataset: (a) ≥ 1,000 replies/s with p99 < 50 ms; (b) 0 timeouts with
p99 < 100 ms; no "cannot decide" replies (request_ok false for want of the database, the watchdog's deadline
answer); the 1M-use (a) throughput within 10 % of the empty one; each bridge's peak RSS < 80 MB and a clean exit
on SIGTERM. The summary is one table (replies/s, p50, p99, timeouts per engine, dataset and load) and
"targets met: YES/NO"; the exit code is 1 when any is missed. The simulated boards use a minimal asyncio MQTT client
(bench/mqttlite.py) so that the generator is not the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import legacy_lab, mqttlite
from .common import ROOT, django_env

sys.path.insert(0, str(ROOT))

from tests import pgserver  # the tests' throwaway servers, same config
from tests.services import Broker, mosquitto, redis_server

TIMEOUT = 2.0
MACHINES = 1000
MEMBERS = 2000
RSS_LIMIT_MB = 80


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    timeouts: int = 0
    undecided: int = 0  # "cannot decide" replies (request_ok false: database unavailable or deadline passed)
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
            f"{label:<46} replies={len(self.latencies):>7}  rate={self.rate:8.1f}/s  timeouts={self.timeouts:>4}  "
            f"undecided={self.undecided:>4}  p50={self.pct(50):6.1f} ms  p95={self.pct(95):6.1f} ms  "
            f"p99={self.pct(99):6.1f} ms"
        )


def undecided(reply: dict) -> bool:
    """The bridge's "cannot decide now" answer (telemetry.protocol.unavailable_reply), not a refusal."""
    if reply.get("request_ok", True):
        return False
    return reply.get("message") == "Backend unavailable" or ("is_valid" in reply and reply.get("name") == "")


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
        reply = json.loads(raw)
        if undecided(reply):
            self.result.undecided += 1
        return reply

    def send(self, payload: dict) -> None:
        assert self.client is not None
        self.client.publish(self.topic, json.dumps(payload).encode())

    def alive(self) -> None:
        self.send(
            {"action": "alive", "version": "bench,v1.0.4", "ip": "10.0.0.1", "serial": "aabbccddeeff", "heap": "1"}
        )


uid_for = legacy_lab.card_uid  # member m's card, in both datasets


# --- set-up steps (each in a fresh Django process) ------------------------------------------------------------------

SEED = r"""
import sys, django
django.setup()
from django.core.management import call_command
from machines.models import Authorization, Machine, MachineType, MaintenancePlan
from members.models import Card, Member, Role
from bench.legacy_lab import card_uid as uid_for
machines, members = int(sys.argv[1]), int(sys.argv[2])
call_command("migrate", verbosity=0)
mtype = MachineType.objects.create(name="Laser", logoff_minutes=1440, grace_minutes=2)
Machine.objects.bulk_create([Machine(id=i, name=f"MACHINE {i}", type=mtype) for i in range(1, machines + 1)])
MaintenancePlan.objects.bulk_create(
    [MaintenancePlan(machine_id=i, hours_between=100000, description="Clean", lcd_message="pulire")
     for i in range(1, machines + 1)]
)
user = Role.objects.create(name="USER")
staff = Role.objects.create(name="STAFF", maintenance=True)
Member.objects.bulk_create(
    [Member(pk=i, first_name=f"Member{i}", email=f"m{i}@bench.test", password="!", role=staff if i % 50 == 0 else user)
     for i in range(1, members + 1)]
)
Card.objects.bulk_create([Card(uid=uid_for(i), member_id=i) for i in range(1, members + 1)])
# Member m is authorized on machines m, m + 137, ... (mod machines): five each.
auths = {(m, 1 + (m - 1 + k * 137) % machines) for m in range(1, members + 1) for k in range(5)}
Authorization.objects.bulk_create([Authorization(member_id=m, machine_id=mc) for m, mc in auths])
"""

HISTORY = r"""
import sys, time, django
django.setup()
from datetime import UTC, datetime
from django.db import connection
from machines.models import Use
from bench.common import static_defaults
count, members, machines = map(int, sys.argv[1:4])
now = int(datetime.now(UTC).timestamp())
cols = ["member_id", "machine_id", "started_at", "ended_at", "last_seen", "duration", "replay"]
extra = static_defaults(Use, cols)  # NOT NULL columns with a default only in Python (Django keeps it there)
connection.ensure_connection()
db = connection.connection
db.execute("PRAGMA cache_size = -300000")  # the random-order index inserts stay in memory (this process only)
t = time.perf_counter()
# Row i starts span·(1 − i/count) + 2 h ago and lasts 60–7,200 s (a cheap deterministic scramble).
db.execute(
    f'''
    WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i + 1 < :count),
    rows(i, started, duration) AS (
        SELECT i, :now - (:span * (:count - i)) / :count - 7200, 60 + (i * 7919) % 7141 FROM seq
    )
    INSERT INTO {Use._meta.db_table} ({", ".join(cols + list(extra))})
    SELECT 1 + i % :members, 1 + i % :machines,
           datetime(started, 'unixepoch'), datetime(started + duration, 'unixepoch'),
           datetime(started + duration, 'unixepoch'), duration, 0 {"".join(f", :x{i}" for i in range(len(extra)))}
    FROM rows
    ''',
    {"count": count, "now": now, "span": 3 * 365 * 86400, "members": members, "machines": machines,
     **{f"x{i}": v for i, v in enumerate(extra.values())}},
)
db.commit()
print(time.perf_counter() - t)
"""

IMPORT = r"""
import json, sys, time, django
django.setup()
from io import StringIO
from django.core.management import call_command
from django.db import connection
from machines.models import Use
t0 = time.perf_counter()
call_command("migrate", verbosity=0)
call_command("bootstrap", stdout=StringIO())
t1 = time.perf_counter()
out = StringIO()
call_command("import_fabomatic", sys.argv[1], stdout=out)
t2 = time.perf_counter()
if connection.vendor == "postgresql":
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE)")
report = out.getvalue()
print(json.dumps({"migrate": t1 - t0, "import": t2 - t1, "analyze": time.perf_counter() - t2,
                  "uses": Use.objects.count(), "done": report.strip().splitlines()[-1],
                  "warnings": sum(1 for line in report.splitlines() if line.startswith("  - "))}))
"""


WAITS = r"""
import collections, json, sys, time
import psycopg
url, seconds = sys.argv[1], float(sys.argv[2])
counts = collections.Counter()
samples = 0
with psycopg.connect(url, autocommit=True) as db:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples += 1
        for state, wtype, wevent, query in db.execute(
            "SELECT state, wait_event_type, wait_event, query FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        ):
            what = "idle: waiting for the bridge" if state == "idle" else (
                f"{state}: {wtype or 'CPU'}:{wevent or '-'}  " + " ".join((query or "").split())[:60])
            counts[what] += 1
        time.sleep(0.005)
print(json.dumps({"samples": samples, "counts": counts.most_common(20)}))
"""


def step(code: str, *args: str, env: dict[str, str]) -> subprocess.Popen:
    """Start a set-up step (a fresh interpreter): its stdout is piped, its stderr shown."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )


def finish(proc: subprocess.Popen, what: str) -> str:
    out, _ = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}), see the traceback above")
    return out.decode()


def bench_env(tmp: Path, database_url: str, broker: Broker, redis_url: str, extra: dict[str, str]) -> dict[str, str]:
    return {
        **django_env(str(tmp)),
        "DATABASE_URL": database_url,
        "MQTT_BROKER_URL": broker.url,
        "MQTT_TOPIC": "machine",
        "MQTT_CLIENT_ID": "bench-bridge",
        "REDIS_URL": redis_url,
        **extra,
    }


# --- processes ------------------------------------------------------------------------------------------------------


def start_bridge(env: dict[str, str], log: Path) -> subprocess.Popen:
    """The bridge, its log in a file: a pipe nobody reads fills at 64 KB and then blocks every thread that logs."""
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "manage.py", "mqtt_listen", "--housekeeping", "60"],
            cwd=ROOT,
            env={"FABOMATIC_PROCESS": "bridge", **env},  # the bridge's apps only, as deployed; --bridge-env wins
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    """The process's resident set (VmRSS) or its peak (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return out


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass
class Procs:
    bridge: int
    broker: int
    postgres: int | None = None  # the postmaster: its backends are its children


def run_load(label: str, coro_fn: Callable, procs: Procs) -> tuple[Result, float]:
    """Run one load and print its line, with the CPU used by the generator (this process), bridge, broker and
    PostgreSQL (all its processes); returns the result and the 1-minute load average at its end."""
    pg_before: dict[int, float] = {}
    if procs.postgres:
        pg_before = {pid: cpu_seconds(pid) for pid in [procs.postgres, *children(procs.postgres)]}
    own, bridge0, broker0 = time.process_time(), cpu_seconds(procs.bridge), cpu_seconds(procs.broker)
    result = asyncio.run(coro_fn())
    wall = result.elapsed or 1.0
    cpu = (
        f"cpu: generator {100 * (time.process_time() - own) / wall:.0f}%"
        f"  bridge {100 * (cpu_seconds(procs.bridge) - bridge0) / wall:.0f}%"
        f"  broker {100 * (cpu_seconds(procs.broker) - broker0) / wall:.0f}%"
    )
    if procs.postgres:
        pids = {procs.postgres, *children(procs.postgres), *pg_before}
        used = sum(cpu_seconds(pid) - pg_before.get(pid, 0.0) for pid in pids)
        cpu += f"  postgres {100 * used / wall:.0f}%"
    loadavg = os.getloadavg()[0]
    print(result.line(label), flush=True)
    print(f"{'':<46} {cpu} of a core;  {load()}", flush=True)
    return result, loadavg


# --- loads ----------------------------------------------------------------------------------------------------------


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
    return reply is not None and not undecided(reply)


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
            started = time.perf_counter()
            for _ in range(2):
                await board.ask({"action": "checkmachine"})
                # The board reports the seconds since its start (a duration longer than that is flagged as
                # implausible by the bridge, which no real board causes: the session here lasts milliseconds).
                await board.ask({"action": "inuse", "uid": board.uid, "duration": int(time.perf_counter() - started)})
            await board.ask({"action": "stopuse", "uid": board.uid, "duration": int(time.perf_counter() - started)})
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
            # The next tick, or the end of the run (not up to 30 s idle past it, which only diluted the rate).
            await asyncio.sleep(max(0.0, min(tick + 30, deadline) - time.perf_counter()))

    await asyncio.gather(*(run(b) for b in boards))
    result.elapsed = time.perf_counter() - start
    unsolicited = sum(b.unsolicited for b in boards)
    if unsolicited:
        print(f"   !! {unsolicited} unsolicited replies")
    for b in boards:
        b.client.close()  # type: ignore[union-attr]
    return result


# --- runs and targets -----------------------------------------------------------------------------------------------


@dataclass
class Row:
    engine: str
    dataset: str
    load: str
    result: Result
    loadavg: float
    target: str = ""
    ok: bool | None = None  # None: no target


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    broker: Broker
    redis_url: str
    rows: list[Row] = field(default_factory=list)
    checks: list[tuple[str, bool]] = field(default_factory=list)  # other targets: (what, met)

    def check(self, what: str, ok: bool) -> None:
        self.checks.append((what, ok))
        if not ok:
            print(f"  !! target missed: {what}", flush=True)

    def env(self, database_url: str) -> dict[str, str]:
        return bench_env(self.tmp, database_url, self.broker, self.redis_url, self.args.bridge_env)

    @contextlib.contextmanager
    def bridge(self, engine: str, database_url: str, postgres: int | None = None):
        """One bridge process on this database, up and answering; on exit its RSS, peak and exit code are checked."""
        log = self.tmp / f"bridge-{engine}-{time.monotonic_ns()}.log"
        proc = start_bridge(self.env(database_url), log)
        try:
            asyncio.run(wait_for_bridge(self.broker.port))
            idle = rss_mb(proc.pid)
            print(f"{engine} bridge up: RSS idle {idle:.1f} MB;  {load()}", flush=True)
            yield Procs(bridge=proc.pid, broker=self.broker.process.pid, postgres=postgres)  # type: ignore[union-attr]
            rss, peak = rss_mb(proc.pid), rss_mb(proc.pid, "VmHWM")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            lines = log.read_text(errors="replace").splitlines()
            if lines:
                levels = {lvl: sum(f" {lvl} " in line for line in lines) for lvl in ("WARNING", "ERROR", "CRITICAL")}
                print(f"bridge log: {len(lines)} lines ({', '.join(f'{n} {k}' for k, n in levels.items())}); tail:")
                print("\n".join(lines[-10:]))
        print(f"{engine} bridge: RSS after the load {rss:.1f} MB (peak {peak:.1f} MB), exit code {proc.returncode}")
        self.check(f"{engine} bridge peak RSS {peak:.0f} MB < {RSS_LIMIT_MB} MB", peak < RSS_LIMIT_MB)
        self.check(f"{engine} bridge exits cleanly on SIGTERM (exit code {proc.returncode})", proc.returncode == 0)

    def loads(self, engine: str, dataset: str, procs: Procs, seed_value: int, statements: str = "") -> Result:
        """single, (a) and (b) (unless --no-fleet); returns (a). ``statements``: a database whose
        pg_stat_statements is reset before (a) and printed after it."""
        opts = self.args
        label = f"[{engine}, {dataset}]"
        r, la = run_load(f"single board {label}", lambda: single(self.broker.port, opts.single), procs)
        self.rows.append(Row(engine, dataset, "single board", r, la))
        waits = None
        if statements:
            reset_statements(statements)
            if opts.pg_waits:
                waits = step(WAITS, statements, str(opts.closed), env=dict(os.environ))
        a, la = run_load(
            f"(a) 20 boards closed loop {label}",
            lambda: closed_loop(self.broker.port, 20, opts.closed, first_machine=1),
            procs,
        )
        if statements:
            print_statements(statements, len(a.latencies))
        if waits is not None:
            print_waits(json.loads(finish(waits, "pg_stat_activity sampler")))
        ok_a = a.rate >= 1000 and a.pct(99) < 50 and a.timeouts == 0 and a.undecided == 0
        self.rows.append(Row(engine, dataset, "(a) 20 boards closed loop", a, la, "≥ 1,000/s, p99 < 50 ms", ok_a))
        if opts.no_fleet:
            return a
        b, la = run_load(
            f"(b) {opts.boards} boards cadence {label}",
            lambda: fleet(self.broker.port, opts.boards, opts.duration, seed_value=seed_value),
            procs,
        )
        ok_b = b.timeouts == 0 and b.pct(99) < 100 and b.undecided == 0
        self.rows.append(
            Row(engine, dataset, f"(b) {opts.boards} boards cadence", b, la, "0 timeouts, p99 < 100", ok_b)
        )
        return a

    # --- datasets ---

    def synthetic(self) -> None:
        db = self.tmp / "synthetic.sqlite3"
        env = self.env(f"sqlite:///{db}")
        t = time.perf_counter()
        finish(step(SEED, str(MACHINES), str(MEMBERS), env=env), "seeding")
        print(f"seeded {MACHINES} machines, {MEMBERS} members in {time.perf_counter() - t:.1f} s", flush=True)
        with self.bridge("SQLite", f"sqlite:///{db}") as procs:
            a0 = self.loads("SQLite", "synthetic, empty history", procs, seed_value=0)
            n = self.args.history
            took = float(finish(step(HISTORY, str(n), str(MEMBERS), str(MACHINES), env=env), "history"))
            print(f"inserted {n:,} uses in {took:.1f} s", flush=True)
            a1 = self.loads("SQLite", f"synthetic, {n:,} uses", procs, seed_value=n)
        self.check(
            f"SQLite (a) throughput with {n:,} uses within 10 % of the empty history's ({a1.rate / a0.rate:.2f})",
            a1.rate >= 0.9 * a0.rate,
        )

    def imported(self, stack: contextlib.ExitStack) -> None:
        n = self.args.imported_uses
        dataset = f"imported {n // 1000}k lab"
        old = self.tmp / "fabomatic-lab.sqldb"
        t = time.perf_counter()
        counts = legacy_lab.build(old, uses=n, machines=MACHINES, members=MEMBERS)
        print(
            f"old FabOMatic 1.0.7 database: {counts['machines']:,} machines, {counts['users']:,} users, "
            f"{counts['uses']:,} uses, {counts['interventions']:,} interventions in {time.perf_counter() - t:.1f} s",
            flush=True,
        )
        targets: dict[str, str] = {}
        if self.args.only != "postgresql":
            targets["SQLite"] = f"sqlite:///{self.tmp / 'imported.sqlite3'}"
        postmaster: int | None = None
        settings = dict(s.split("=", 1) for s in self.args.pg_setting)
        if self.args.pg_statements:
            settings.setdefault("shared_preload_libraries", "pg_stat_statements")
            settings.setdefault("pg_stat_statements.track", "all")
        try:
            cluster = pgserver.start(settings, prefix="pg-bench-")
        except pgserver.Unavailable as exc:
            print(f"PostgreSQL: not measured: {exc}")
            self.check(f"PostgreSQL measured ({exc})", False)
        else:
            stack.callback(cluster.stop)
            cluster.create_database("fabomatic")
            targets["PostgreSQL"] = cluster.socket_url("fabomatic") if self.args.pg_socket else cluster.url("fabomatic")
            postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
            shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "stock settings"
            via = "unix socket" if self.args.pg_socket else "TCP 127.0.0.1"
            print(
                f"PostgreSQL {cluster.bin.parent.name}: throwaway cluster on port {cluster.port} ({shown}), via {via}"
            )
        # Both imports at once (they are set-up, not measured): ~half the wall time on two cores.
        t = time.perf_counter()
        procs = {engine: step(IMPORT, str(old), env=self.env(url)) for engine, url in targets.items()}
        for engine, proc in procs.items():
            report = json.loads(finish(proc, f"import into {engine}").strip().splitlines()[-1])
            print(
                f"import_fabomatic into {engine}: migrate+bootstrap {report['migrate']:.1f} s, import "
                f"{report['import']:.1f} s"
                + (f", VACUUM (ANALYZE) {report['analyze']:.1f} s" if engine == "PostgreSQL" else "")
                + f" (both imports at once, {time.perf_counter() - t:.0f} s in all); {report['uses']:,} uses, "
                f"{report['warnings']} warnings; {report['done']}",
                flush=True,
            )
            self.check(f"{engine}: the import brought all {n:,} uses over", report["uses"] == n)
        for engine, url in targets.items():
            pg = engine == "PostgreSQL"
            with self.bridge(engine, url, postmaster if pg else None) as procs_:
                self.loads(
                    engine, dataset, procs_, seed_value=n, statements=url if pg and self.args.pg_statements else ""
                )


def _statements(url: str, sql: str, params: list | None = None) -> list[tuple]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        return db.execute(sql, params).fetchall()


def reset_statements(url: str) -> None:
    _statements(url, "SELECT pg_stat_statements_reset()")


def print_statements(url: str, replies: int, top: int = 25) -> None:
    """The statements since the reset, most frequent first (pg_stat_statements), and the round trips per reply:
    top-level statements only (the foreign-key checks run inside the server, nested)."""
    this_db = "dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
    rows = _statements(
        url,
        "SELECT toplevel, calls, total_exec_time, mean_exec_time, rows, query FROM pg_stat_statements "
        f"WHERE {this_db} ORDER BY calls DESC LIMIT %s",
        [top],
    )
    calls, total = _statements(
        url, f"SELECT sum(calls), sum(total_exec_time) FROM pg_stat_statements WHERE {this_db} AND toplevel"
    )[0]
    print(
        f"pg_stat_statements during (a): {calls:,} statements sent for {replies:,} replies "
        f"({calls / max(replies, 1):.2f} round trips per reply), {total / 1000:.2f} s executing in all"
    )
    for toplevel, n, total_ms, mean_ms, nrows, query in rows:
        print(
            f"  {n:>8} calls {n / max(replies, 1):5.2f}/reply {total_ms / 1000:6.2f} s {mean_ms:6.3f} ms/call "
            f"{nrows:>7} rows  {'' if toplevel else '(nested) '}" + " ".join(query.split())[:100]
        )


def print_waits(report: dict) -> None:
    """What the bridge's server backends were doing during (a), sampled from pg_stat_activity every ~5 ms."""
    samples = report["samples"]
    print(f"pg_stat_activity during (a), {samples} samples: backends per sample in each state")
    for what, n in report["counts"]:
        print(f"  {n / samples:6.2f}  {what}")


def print_table(rows: list[Row], checks: list[tuple[str, bool]]) -> bool:
    print("\nSummary (replies/s, latency percentiles, > 2 s timeouts, 'cannot decide' replies, 1-min load average)")
    head = (
        f"  {'engine':<11} {'dataset':<26} {'load':<27} {'replies/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'timeouts':>8} "
        f"{'undecided':>9} {'load':>5}  target"
    )
    print(head)
    print("  " + "-" * (len(head) + 10))
    for r in rows:
        res = r.result
        verdict = "" if r.ok is None else f"{r.target}: {'yes' if r.ok else 'NO'}"
        print(
            f"  {r.engine:<11} {r.dataset:<26} {r.load:<27} {res.rate:>9.0f} {res.pct(50):>7.1f} {res.pct(99):>7.1f} "
            f"{res.timeouts:>8} {res.undecided:>9} {r.loadavg:>5.2f}  {verdict}"
        )
    for what, ok in checks:
        print(f"  {'yes' if ok else 'NO '}  {what}")
    met = all(r.ok is not False for r in rows) and all(ok for _, ok in checks)
    print(f"  targets met: {'YES' if met else 'NO'}", flush=True)
    return met


# --- main -----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bridge", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, smaller histories (a smoke test)")
    parser.add_argument(
        "--only", choices=["synthetic", "imported", "postgresql"], help="one dataset only (postgresql: imported lab)"
    )
    parser.add_argument("--no-fleet", action="store_true", help="single and (a) only, no (b)")
    parser.add_argument("--pg-socket", action="store_true", help="the bridge reaches PostgreSQL by its unix socket")
    parser.add_argument("--boards", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (b)")
    parser.add_argument("--closed", type=float, default=15.0, help="seconds of load (a)")
    parser.add_argument("--single", type=int, default=1000, help="requests of the single board")
    parser.add_argument("--history", type=int, default=1_000_000, help="uses added to the synthetic lab")
    parser.add_argument("--imported-uses", type=int, default=200_000, help="uses in the old database imported")
    parser.add_argument(
        "--no-redis",
        action="store_true",
        help="no channel layer (by default the bridge broadcasts dashboard updates to its own Redis, as deployed)",
    )
    parser.add_argument(
        "--pg-setting", action="append", default=[], metavar="NAME=VALUE", help="a PostgreSQL server setting"
    )
    parser.add_argument(
        "--pg-statements", action="store_true", help="load pg_stat_statements and print the top statements"
    )
    parser.add_argument(
        "--pg-waits", action="store_true", help="with --pg-statements: sample pg_stat_activity during (a)"
    )
    parser.add_argument(
        "--bridge-env", action="append", default=[], metavar="NAME=VALUE", help="environment of the bridge processes"
    )
    args = parser.parse_args(argv)
    args.bridge_env = dict(s.split("=", 1) for s in args.bridge_env)
    if args.quick:
        args.duration, args.closed, args.single = 35.0, 5.0, 300
        args.history, args.imported_uses = 100_000, 20_000
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C: the servers and the PostgreSQL cluster are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-bridge-")))
        broker = stack.enter_context(mosquitto())
        redis_url = "" if args.no_redis else stack.enter_context(redis_server()).url
        print(f"machine: {os.cpu_count()} cores, {sys.platform}; broker mosquitto with set_tcp_nodelay", flush=True)
        print(f"channel layer: {'Redis (pub/sub layer)' if redis_url else 'none (in-memory, nobody listens)'}")
        if args.bridge_env:
            print(f"bridge environment: {args.bridge_env}")
        bench = Bench(args, tmp, broker, redis_url)
        try:
            if args.only in (None, "synthetic"):
                bench.synthetic()
            if args.only in (None, "imported", "postgresql"):
                bench.imported(stack)
        except Exception as exc:  # a failed step is a missed target, and the table shows what was measured
            import traceback

            traceback.print_exc()
            bench.check(f"the benchmark ran to the end ({type(exc).__name__}: {exc})", False)
        met = print_table(bench.rows, bench.checks)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
