"""What the benchmarks share: a Django environment on a throwaway data directory, and steps run in it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def django_env(data_dir: str) -> dict[str, str]:
    """The environment of a benchmark's Django processes: its own SQLite file, no .env, no Redis."""
    env = dict(os.environ)
    env.update(
        FABOMATIC_DATA_DIR=data_dir,
        FABOMATIC_ENV_FILE="/nonexistent",
        DJANGO_SETTINGS_MODULE="fabomatic.settings",
        SECRET_KEY="bench-only-insecure-key",
        DEBUG="0",
        SECURE_SSL="0",
        ALLOWED_HOSTS="testserver,localhost,127.0.0.1",  # the portal benchmark's test client asks for testserver
        REDIS_URL="",
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    env.pop("DATABASE_URL", None)
    return env


def static_defaults(model: Any, given: list[str]) -> dict[str, Any]:
    """The NOT NULL columns of ``model`` that a raw INSERT naming only ``given`` leaves out, with their defaults.

    Django keeps a field's ``default`` in Python, not in the table: a raw INSERT must name every such column, or a
    new field breaks the benchmark's bulk loads. Call it in a Django process.
    """
    from django.db import connection

    return {
        f.column: f.get_db_prep_save(f.get_default(), connection)
        for f in model._meta.concrete_fields
        if f.column not in given and not f.null and not f.primary_key and f.has_default()
    }


def run_python(code: str, *args: str, env: dict[str, str]) -> str:
    """Run one step in a fresh interpreter (so its memory and timings are its own); returns its stdout."""
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"benchmark step failed (exit {done.returncode}), see the traceback above")
    return done.stdout
