"""Benchmark: the GDPR purge of 1,000,000 uses (target: under 60 s, memory bounded).

Builds a throwaway SQLite database with N old uses (past the retention) and a few recent ones, then runs
``manage.py purge`` in a fresh process and prints its wall time and peak RSS, next to the peak RSS of the same
process doing nothing but start Django (the difference is what the purge itself holds).

    .venv/bin/python -m bench.purge [--uses 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

from .common import ROOT, django_env

MEMORY_LIMIT_MB = 64

RUNNER = """
import json, sys, time
import django
django.setup()
from io import StringIO
from django.core.management import call_command
t = time.perf_counter()
out = StringIO()
if sys.argv[1] == "purge":
    call_command("purge", "--progress", "none", stdout=out)
# VmHWM is this process's own peak (ru_maxrss carries the parent's peak across fork/exec).
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": time.perf_counter() - t, "rss_kb": hwm,
                  "summary": out.getvalue().strip()}))
"""


def _populate(env: dict[str, str], uses: int, recent: int) -> None:
    """Create the schema and the rows (raw executemany: the benchmark is the purge, not the insert)."""
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    code = f"""
import django, itertools
django.setup()
from datetime import timedelta
from django.db import connection, transaction
from django.utils import timezone
from machines.models import Machine, MachineType, Use
from members.models import Member
from bench.common import static_defaults
t = MachineType.objects.create(name="T")
m = Machine.objects.create(id=1, name="LASER", type=t)
member = Member.objects.create_user(email="nina@lab.test", first_name="Nina")
Member.objects.anonymous()
now = timezone.now()
old, new = (now - timedelta(days=400)).isoformat(), (now - timedelta(days=1)).isoformat()
cols = ["member_id", "machine_id", "started_at", "ended_at", "last_seen", "duration", "replay"]
extra = static_defaults(Use, cols)  # NOT NULL columns whose default Django keeps in Python
names, marks = ", ".join(cols + list(extra)), ", %s" * len(extra)
sql = "INSERT INTO " + Use._meta.db_table + " (" + names + ") VALUES (%s, 1, %s, %s, %s, 60, 0" + marks + ")"
more = tuple(extra.values())
def rows(n, ts):
    return ((member.pk, ts, ts, ts, *more) for _ in range(n))
with connection.cursor() as c:
    for ts, n in ((old, {uses}), (new, {recent})):
        left = n
        while left:
            k = min(left, 100_000)
            with transaction.atomic():
                c.executemany(sql, list(rows(k, ts)))
            left -= k
"""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)


def _run(env: dict[str, str], what: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", RUNNER, what], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uses", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 uses")
    args = parser.parse_args(argv)
    if args.quick:
        args.uses = 100_000
    with tempfile.TemporaryDirectory(prefix="bench-purge-") as tmp:
        env = django_env(tmp)
        t = time.perf_counter()
        _populate(env, args.uses, recent=10_000)
        setup = time.perf_counter() - t
        baseline = _run(env, "baseline")
        first = _run(env, "purge")
        again = _run(env, "purge")
    extra_mb = (first["rss_kb"] - baseline["rss_kb"]) / 1024
    print(
        f"purge: {args.uses:,} old uses (+10,000 recent) anonymised in {first['seconds']:.1f} s, "
        f"peak RSS {first['rss_kb'] / 1024:.0f} MB (Django alone {baseline['rss_kb'] / 1024:.0f} MB); "
        f"second run (idempotent) {again['seconds']:.1f} s; setup {setup:.0f} s"
    )
    print(f"  {first['summary']}")
    print(f"  {again['summary']}")
    # Targets: under 60 s; memory bounded (batches: the purge holds well under MEMORY_LIMIT_MB above Django alone);
    # every old use anonymised, and nothing the second time.
    ok = (
        first["seconds"] < 60
        and extra_mb < MEMORY_LIMIT_MB
        and f"Purged: {args.uses} uses" in first["summary"]
        and "Purged: 0 uses" in again["summary"]
    )
    print(
        f"purge benchmark: {'all targets met' if ok else 'TARGET MISSED'} (< 60 s, < {MEMORY_LIMIT_MB} MB above "
        f"Django alone: {extra_mb:.0f} MB, {args.uses:,} uses then 0 purged)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
