"""What the benchmarks share: a Django environment on a throwaway data directory, and steps run in it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
        REDIS_URL="",
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    env.pop("DATABASE_URL", None)
    return env


def run_python(code: str, *args: str, env: dict[str, str]) -> str:
    """Run one step in a fresh interpreter (so its memory and timings are its own); returns its stdout."""
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"benchmark step failed (exit {done.returncode}), see the traceback above")
    return done.stdout
