"""The audit trail, the restore and the REST API on a real PostgreSQL: tests/test_audit.py,
tests/postgresql_cases.py and tests/test_api.py (its rights, filters and audited writes) again, in a child pytest
whose DATABASE_URL is a throwaway cluster (tests/pgserver.py).

What differs there: the trail's JSON lookups (a deleted card's entries found by ``changes__member__1``), ``icontains``
over jsonb columns, the retention purge's date filter, ``pg_dump``/``pg_restore`` behind the System page's backup and
restore. The suite's own database is SQLite and pytest-django sets it up once per process, hence the child. Skipped
only when PostgreSQL cannot be started here (no server binaries: ``scripts/setup.sh test`` installs them).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from . import pgserver

MODULES = ["tests/test_audit.py", "tests/postgresql_cases.py", "tests/test_api.py"]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    try:
        cluster = pgserver.start({"fsync": "off", "synchronous_commit": "off"}, prefix="pg-audit-")
    except pgserver.Unavailable as exc:
        pytest.skip(f"PostgreSQL cannot be started here: {exc}")
    try:
        yield cluster.url()
    finally:
        cluster.stop()


def test_the_audit_trail_and_the_restore_pass_on_postgresql(postgres: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": postgres}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'child'}"]
    done = subprocess.run(
        [*command, *MODULES], cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=600
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    summary = output.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, output[-3000:]  # nothing skipped there
