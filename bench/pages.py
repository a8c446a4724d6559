"""Benchmark: the portal pages staff open daily, on a lab imported from an old FabOMatic database.

    .venv/bin/python -m bench.pages [--uses 1000000] [--quick] [--only sqlite|postgresql]

Builds an old FabOMatic 1.0.7 database (bench/legacy_lab.py: 1,000 machines, 2,002 users, ``--uses`` uses),
brings it over with ``import_fabomatic`` into a fresh SQLite file and into a throwaway PostgreSQL cluster
(tests/pgserver.py; both imports at once, as bench/bridge.py does), then, in a fresh Django process per engine,
times each page with the test client as a logged-in superuser: three warm-up requests, then the median of five,
and the number of queries of one more (on PostgreSQL after a ``VACUUM ANALYZE``, as autovacuum leaves
an imported database minutes later). Pages: the dashboard, the busiest machine's and the busiest member's change
pages, and the lists of machines, members, uses, interventions, maintenance plans, cards and boards, each also
with a search; and the REST API's machines and uses (first page, next page, by machine, by member, a month).
Targets: every page under 150 ms and under 40 queries. ``--quick``: 200,000 uses.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from . import legacy_lab
from .bridge import IMPORT, finish, pgserver, step
from .common import django_env

TARGET_MS = 150.0
TARGET_QUERIES = 40
RUNS = 5

MEASURE = r"""
import json, statistics, sys, time
import django
django.setup()
from django.db import connection
from django.db.models import Count
from django.test import Client
from django.test.utils import CaptureQueriesContext
from datetime import timedelta
from django.utils import timezone
from machines.models import Intervention, MaintenancePlan, Machine, Use
from members.models import Card, Member
from telemetry.models import Board

runs = int(sys.argv[1])
if connection.vendor == "postgresql":
    # What autovacuum does in the minutes after an import of a million rows (and what staff's daily pages meet):
    # done here so that it does not run, at its own moment, under the timings.
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
admin = Member.objects.filter(email="pages-bench@lab.test").first() or Member.objects.create_superuser(
    email="pages-bench@lab.test", password="bench-password", first_name="Bench")
client = Client()
client.force_login(admin)
# The busiest machine and member: the pages with the most history behind them.
machine = Machine.objects.get(pk=Use.objects.values("machine").annotate(n=Count("id")).order_by("-n")[0]["machine"])
member = Member.objects.get(pk=Use.objects.values("member").annotate(n=Count("id")).order_by("-n")[0]["member"])
plan = MaintenancePlan.objects.filter(machine=machine).first()
card = Card.objects.filter(member=member).first()
board = Board.objects.filter(machine=machine).first()
word = machine.name.split()[0]
month_ago = (timezone.now() - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
pages = [
    ("dashboard", "/admin/"),
    ("machine page", f"/admin/machines/machine/{machine.pk}/change/"),
    ("member page", f"/admin/members/member/{member.pk}/change/"),
    ("machines list", "/admin/machines/machine/"),
    ("machines search", f"/admin/machines/machine/?q={word}"),
    ("members list", "/admin/members/member/"),
    ("members search", f"/admin/members/member/?q={member.last_name or member.first_name}"),
    ("uses list", "/admin/machines/use/"),
    ("uses search", f"/admin/machines/use/?q={member.first_name}"),
    ("interventions list", "/admin/machines/intervention/"),
    ("interventions search", f"/admin/machines/intervention/?q={word}"),
    ("maintenance list", "/admin/machines/maintenanceplan/"),
    ("maintenance search", f"/admin/machines/maintenanceplan/?q={plan.description if plan else word}"),
    ("cards list", "/admin/members/card/"),
    ("cards search", f"/admin/members/card/?q={card.uid if card else 'x'}"),
    ("boards list", "/admin/telemetry/board/"),
    ("boards search", f"/admin/telemetry/board/?q={board.serial if board else word}"),
    # The REST API (api/), with the superuser's portal session: its uses list pages along an index (keyset).
    ("API machines", "/api/v1/machines/"),
    ("API uses list", "/api/v1/uses/"),
    ("API uses next page", client.get("/api/v1/uses/").json()["next"]),
    ("API uses by machine", f"/api/v1/uses/?machine={machine.pk}"),
    ("API uses by member", f"/api/v1/uses/?member={member.pk}"),
    ("API uses last month", "/api/v1/uses/?started_after=" + month_ago),
]
out = []
for label, url in pages:
    for _ in range(3):
        assert client.get(url).status_code == 200, url
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - t) * 1000)
        assert response.status_code == 200, url
    with CaptureQueriesContext(connection) as q:
        client.get(url)
    out.append({"page": label, "url": url, "median_ms": statistics.median(times), "max_ms": max(times),
                "queries": len(q.captured_queries), "load": open("/proc/loadavg").read().split()[0]})
print(json.dumps({"uses": Use.objects.count(), "interventions": Intervention.objects.count(), "pages": out}))
"""


def env_for(tmp: Path, database_url: str) -> dict[str, str]:
    return {**django_env(str(tmp)), "DATABASE_URL": database_url}


def import_lab(tmp: Path, uses: int, only: str | None, stack: contextlib.ExitStack) -> dict[str, str]:
    """The old database, imported into each engine; returns engine → database URL."""
    old = tmp / "fabomatic-lab.sqldb"
    t = time.perf_counter()
    counts = legacy_lab.build(old, uses=uses)
    print(f"old FabOMatic database: {counts['uses']:,} uses in {time.perf_counter() - t:.1f} s", flush=True)
    targets: dict[str, str] = {}
    if only != "postgresql":
        targets["SQLite"] = f"sqlite:///{tmp / 'imported.sqlite3'}"
    if only != "sqlite":
        try:
            cluster = pgserver.start(prefix="pg-pages-")
        except pgserver.Unavailable as exc:
            print(f"PostgreSQL: not measured: {exc}")
        else:
            stack.callback(cluster.stop)
            cluster.create_database("fabomatic")
            targets["PostgreSQL"] = cluster.url("fabomatic")
    t = time.perf_counter()
    procs = {engine: step(IMPORT, str(old), env=env_for(tmp, url)) for engine, url in targets.items()}
    for engine, proc in procs.items():
        report = json.loads(finish(proc, f"import into {engine}").strip().splitlines()[-1])
        print(f"import_fabomatic into {engine}: {report['uses']:,} uses ({time.perf_counter() - t:.0f} s)", flush=True)
    return targets


def print_table(engine: str, result: dict) -> bool:
    print(f"\n{engine}, imported lab of {result['uses']:,} uses, {result['interventions']:,} interventions:")
    print(f"  {'page':<22} {'median ms':>9} {'max ms':>8} {'queries':>7}  load  target")
    met = True
    for row in result["pages"]:
        ok = row["median_ms"] < TARGET_MS and row["queries"] < TARGET_QUERIES
        met &= ok
        print(
            f"  {row['page']:<22} {row['median_ms']:>9.1f} {row['max_ms']:>8.1f} {row['queries']:>7}  "
            f"{row['load']:>4}  {'yes' if ok else 'NO'}"
        )
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pages", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller history (200,000 uses)")
    parser.add_argument("--uses", type=int, default=1_000_000)
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    args = parser.parse_args(argv)
    if args.quick:
        args.uses = 200_000
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    met = True
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-pages-")))
        print(f"machine: {os.cpu_count()} cores; targets: every page < {TARGET_MS:.0f} ms, < {TARGET_QUERIES} queries")
        targets = import_lab(tmp, args.uses, args.only, stack)
        if args.only != "sqlite" and "PostgreSQL" not in targets:
            met = False
        for engine, url in targets.items():
            result = json.loads(finish(step(MEASURE, str(RUNS), env=env_for(tmp, url)), f"{engine} pages"))
            met &= print_table(engine, result)
    print(f"  targets met: {'YES' if met else 'NO'}", flush=True)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
