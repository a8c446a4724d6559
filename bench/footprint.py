"""Benchmark: the memory of the whole system after a realistic hour, on a lab brought over from FabOMatic.

    .venv/bin/python -m bench.footprint [--speed 20] [--boards 20] [--quick]

1. Builds an old FabOMatic database of 200,000 uses, 1,000 machines and 2,000 members (bench/legacy_lab.py) and
   brings it over as a lab does (``migrate``, ``bootstrap``, ``import_fabomatic``) into SQLite, the default.
2. Starts what ``make run`` starts, as it starts them: Mosquitto (``deploy/mosquitto/dev.conf``'s local listener),
   Redis, the portal (``scripts/web.sh``: daphne over HTTPS) and the bridge (the Procfile's ``manage.py
   mqtt_listen`` with ``FABOMATIC_PROCESS=bridge``).
3. Plays one hour, ``--speed`` times faster: 20 boards at the firmware's cadence (docs/protocol.md §2.11:
   ``checkmachine`` and, while busy, ``inuse`` every 30 s; ``alive`` every 120 s; sessions of 2-40 min between idle
   spells of 1-20 min, each ``checkuser``, ``startuse``, ``checkmachine`` ... ``stopuse``), and a staff member with
   the dashboard open (its websocket receives every tile update) who opens a portal page every minute, going round
   the dashboard, the lists of machines, uses, members, interventions, maintenance plans, boards and cards, a machine
   and a member, the System page and a search through the uses. The durations the boards report are the seconds
   that really passed (a compressed 30-minute session is ~90 s long): the bridge's plausibility rule judges them
   by its own clock.
4. Samples the resident set (RSS) and the proportional set (PSS: shared library pages divided among the processes
   that map them) of each process every second. Target: portal + bridge RSS after the hour < 160 MB (issue 10).

The allocator settings of fabomatic/memory.py (two malloc arenas, ``malloc_trim`` every 30 s) are on, as in every
process the project starts; ``--trim-seconds 0`` shows the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import legacy_lab
from .bridge import IMPORT, Board, Result, bench_env, finish, step
from .common import ROOT, run_python

sys.path.insert(0, str(ROOT))
from tests.services import free_port, mosquitto, redis_server, wait_for_port

TARGET_MB = 160.0
HOUR = 3600.0
STAFF_EMAIL = "footprint@bench.test"
PAGES = [
    "/admin/",
    "/admin/machines/machine/",
    "/admin/machines/use/",
    "/admin/members/member/",
    "/admin/machines/intervention/",
    "/admin/machines/maintenanceplan/",
    "/admin/telemetry/board/",
    "/admin/members/card/",
    "/admin/machines/machine/7/change/",
    "/admin/members/member/12/change/",
    "/admin/system/",
    "/admin/machines/use/?q=Member+1",
]

SESSION = r"""
import sys, django
django.setup()
from django.test import Client
from members.models import Member
staff = Member.objects.create_superuser(email=sys.argv[1], password="footprint-bench-password", first_name="Staff")
client = Client()
client.force_login(staff)
print(client.cookies["sessionid"].value)
"""


@dataclass
class Memory:
    """RSS and PSS samples of one process, in MB."""

    pid: int
    rss: list[float] = field(default_factory=list)
    pss: list[float] = field(default_factory=list)

    def sample(self) -> None:
        rss = pss = float("nan")
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/smaps_rollup").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("Rss", "Pss"):
                    mb = int(value.split()[0]) / 1024
                    rss, pss = (mb, pss) if key == "Rss" else (rss, mb)
        self.rss.append(rss)
        self.pss.append(pss)


class Sampler(threading.Thread):
    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.memory = {name: Memory(pid) for name, pid in pids.items()}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            for memory in self.memory.values():
                memory.sample()
            self.stopped.wait(1.0)

    def stop(self) -> None:
        self.stopped.set()
        self.join()
        for memory in self.memory.values():  # the figure "after the hour"
            memory.sample()


@dataclass
class Traffic:
    requests: Result = field(default_factory=Result)
    alive: int = 0
    sessions: int = 0
    pages: int = 0
    page_errors: list[str] = field(default_factory=list)
    page_bytes: int = 0
    tile_updates: int = 0


async def board_hour(board: Board, speed: float, hour_end: float, rng: random.Random, traffic: Traffic) -> None:
    """One board's hour at the firmware's cadence: a network tick every 30 s, alive every 120 s, sessions."""
    loop = asyncio.get_running_loop()
    assert board.client is not None
    alive = {"action": "alive", "version": "1.0.7,esp32", "ip": "10.0.0.2", "serial": f"{board.machine_id:012x}"}
    busy_since: float | None = None
    next_tick = loop.time() + rng.uniform(0, 30) / speed
    next_alive = loop.time() + 120 / speed
    next_change = loop.time() + rng.uniform(0, 20 * 60) / speed
    while loop.time() < hour_end:
        now = loop.time()
        if now >= next_alive:
            heap = str(rng.randrange(100_000, 200_000))
            board.client.publish(board.topic, json.dumps({**alive, "heap": heap}).encode())
            traffic.alive += 1
            next_alive += 120 / speed
        if now >= next_change:
            if busy_since is None:
                await board.ask({"action": "checkuser", "uid": board.uid})
                await board.ask({"action": "startuse", "uid": board.uid})
                await asyncio.sleep(1 / speed)
                await board.ask({"action": "checkmachine"})
                busy_since = loop.time()
                traffic.sessions += 1
                next_change = busy_since + rng.uniform(2 * 60, 40 * 60) / speed
            else:
                await board.ask({"action": "stopuse", "uid": board.uid, "duration": int(now - busy_since)})
                busy_since = None
                next_change = loop.time() + rng.uniform(60, 20 * 60) / speed
        if now >= next_tick:
            await board.ask({"action": "checkmachine"})
            if busy_since is not None:
                await board.ask({"action": "inuse", "uid": board.uid, "duration": int(loop.time() - busy_since)})
            next_tick += 30 / speed
        await asyncio.sleep(max(0.0, min(next_tick, next_alive, next_change, hour_end) - loop.time()))
    if busy_since is not None:
        await board.ask({"action": "stopuse", "uid": board.uid, "duration": int(loop.time() - busy_since)})


def fetch(url: str, session: str, context: ssl.SSLContext) -> bytes:
    request = urllib.request.Request(url, headers={"Cookie": f"sessionid={session}"})
    with urllib.request.urlopen(request, context=context, timeout=30) as response:
        return response.read()


async def staff_hour(base: str, session: str, speed: float, hour_end: float, traffic: Traffic) -> None:
    """The dashboard open all hour (its websocket counting tile updates) and a page a minute."""
    import websockets

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the self-signed certificate of make run
    loop = asyncio.get_running_loop()
    ws_url = base.replace("https://", "wss://") + "/ws/dashboard/"
    headers = {"Origin": base, "Cookie": f"sessionid={session}"}
    async with websockets.connect(ws_url, additional_headers=headers, ssl=context) as socket:

        async def listen() -> None:
            async for _message in socket:
                traffic.tile_updates += 1

        listener = asyncio.create_task(listen())
        page = 0
        while loop.time() < hour_end:
            url = base + PAGES[page % len(PAGES)]
            page += 1
            try:
                traffic.page_bytes += len(await asyncio.to_thread(fetch, url, session, context))
            except Exception as exc:  # reported, not fatal: the memory figures are still worth having
                traffic.page_errors.append(f"{url}: {exc}")
            traffic.pages += 1
            await asyncio.sleep(max(0.0, min(60 / speed, hour_end - loop.time())))
        listener.cancel()


async def play_hour(broker_port: int, base: str, session: str, boards: int, speed: float) -> Traffic:
    traffic = Traffic()
    rng = random.Random(10)
    simulated = [Board(m, legacy_lab.card_uid(m), traffic.requests) for m in range(1, boards + 1)]
    for board in simulated:
        await board.connect(broker_port)
    hour_end = asyncio.get_running_loop().time() + HOUR / speed
    await asyncio.gather(
        staff_hour(base, session, speed, hour_end, traffic),
        *(board_hour(b, speed, hour_end, random.Random(rng.random()), traffic) for b in simulated),
    )
    for board in simulated:
        assert board.client is not None
        board.client.close()
    return traffic


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def report(sampler: Sampler, traffic: Traffic, minutes: float) -> bool:
    memory = sampler.memory
    print(
        f"traffic: {len(traffic.requests.latencies):,} board requests answered "
        f"({traffic.requests.timeouts} unanswered, "
        f"{traffic.requests.undecided} request_ok false), {traffic.alive} alive, {traffic.sessions} sessions; "
        f"{traffic.pages} pages ({traffic.page_bytes / 1e6:.1f} MB of HTML, {len(traffic.page_errors)} errors), "
        f"{traffic.tile_updates} dashboard updates; {minutes:.1f} min of wall time"
    )
    for error in traffic.page_errors[:3]:
        print("  page error:", error)
    print(f"{'process':<10} {'RSS start':>10} {'RSS end':>9} {'RSS peak':>9} {'PSS end':>9}")
    for name, m in memory.items():
        print(f"{name:<10} {m.rss[0]:8.1f} MB {m.rss[-1]:6.1f} MB {max(m.rss):6.1f} MB {m.pss[-1]:6.1f} MB")
    app_rss = memory["portal"].rss[-1] + memory["bridge"].rss[-1]
    app_pss = memory["portal"].pss[-1] + memory["bridge"].pss[-1]
    everything_rss = sum(m.rss[-1] for m in memory.values())
    everything_pss = sum(m.pss[-1] for m in memory.values())
    peak = max(p + b for p, b in zip(memory["portal"].rss, memory["bridge"].rss, strict=False))
    print(
        f"portal + bridge after the hour: RSS {app_rss:.1f} MB (PSS {app_pss:.1f} MB), peak RSS {peak:.1f} MB; "
        f"whole system (with Redis and Mosquitto): RSS {everything_rss:.1f} MB, PSS {everything_pss:.1f} MB"
    )
    ok = app_rss < TARGET_MB and traffic.requests.timeouts == 0 and not traffic.page_errors
    print(
        f"target: portal + bridge RSS < {TARGET_MB:.0f} MB after the hour, every request answered: "
        f"{'met' if ok else 'NOT MET'}"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__.split("\n")[0])
    parser.add_argument("--speed", type=float, default=20.0, help="how much faster than real time (default 20)")
    parser.add_argument("--boards", type=int, default=20)
    parser.add_argument("--uses", type=int, default=200_000)
    parser.add_argument("--trim-seconds", default=None, help="MEMORY_TRIM_SECONDS of the processes (default 30)")
    parser.add_argument("--quick", action="store_true", help="50,000 uses, 60 times real time")
    args = parser.parse_args(argv)
    if args.quick:
        args.uses, args.speed = 50_000, 60.0
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-footprint-", dir=ROOT / "var")))
        t = time.perf_counter()
        old = tmp / "lab.sqldb"
        legacy_lab.build(old, uses=args.uses, machines=1000, members=2000)
        redis = stack.enter_context(redis_server())
        broker = stack.enter_context(mosquitto())
        env = bench_env(tmp, f"sqlite:///{tmp / 'fabomatic.sqlite3'}", broker, redis.url, {})
        env.pop("MEMORY_TRIM_SECONDS", None)
        if args.trim_seconds is not None:
            env["MEMORY_TRIM_SECONDS"] = args.trim_seconds
        imported = json.loads(finish(step(IMPORT, str(old), env=env), "import").strip().splitlines()[-1])
        session = run_python(SESSION, STAFF_EMAIL, env=env).strip()
        print(
            f"lab: 1,000 machines, 2,000 members, {imported['uses']:,} uses imported from FabOMatic "
            f"({time.perf_counter() - t:.0f} s to build); {args.boards} boards, {args.speed:g}x real time",
            flush=True,
        )
        port = free_port()
        web_env = {**env, "WEB_PORT": str(port), "BIND": "127.0.0.1", "LOG_LEVEL": "INFO"}
        portal = start(["scripts/web.sh"], web_env, tmp / "web.log")
        stack.callback(stop, portal)
        bridge = start(
            [sys.executable, "manage.py", "mqtt_listen"], {**env, "FABOMATIC_PROCESS": "bridge"}, tmp / "bridge.log"
        )
        stack.callback(stop, bridge)
        wait_for_port(port, timeout=60)
        time.sleep(3)  # both settled after start-up
        assert broker.process is not None
        sampler = Sampler(
            {"portal": portal.pid, "bridge": bridge.pid, "redis": redis.pid, "mosquitto": broker.process.pid}
        )
        sampler.start()
        t = time.perf_counter()
        traffic = asyncio.run(play_hour(broker.port, f"https://127.0.0.1:{port}", session, args.boards, args.speed))
        time.sleep(2)
        sampler.stop()
        ok = report(sampler, traffic, (time.perf_counter() - t) / 60)
        for name, process in (("portal", portal), ("bridge", bridge)):
            if process.poll() is not None:
                print(f"{name} exited early ({process.returncode}):", (tmp / f"{name}.log").read_text()[-2000:])
                ok = False
    print("footprint benchmark:", "target met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
