"""Consistent database backups while the bridge and the portal keep writing.

SQLite: the online backup API (``sqlite3.Connection.backup``) copies a consistent snapshot page by page.
PostgreSQL: ``pg_dump`` in custom format (restore with ``pg_restore``).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

from django.db import connection


def is_sqlite() -> bool:
    return connection.vendor == "sqlite"


def database_size() -> int | None:
    """Bytes used by the database (SQLite file plus its WAL), or None if unknown."""
    if is_sqlite():
        name = Path(connection.settings_dict["NAME"])
        return sum(p.stat().st_size for p in (name, Path(f"{name}-wal")) if p.exists())
    if connection.vendor == "postgresql":
        with connection.cursor() as c:
            c.execute("SELECT pg_database_size(current_database())")
            return int(c.fetchone()[0])
    return None


def sqlite_backup(destination: Path) -> Path:
    """Write a consistent copy of the SQLite database to ``destination``."""
    source = sqlite3.connect(connection.settings_dict["NAME"], timeout=30)
    target = sqlite3.connect(destination)
    try:
        with target:
            source.backup(target, pages=1024)
    finally:
        target.close()
        source.close()
    return destination


def _pg_env(args: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    s = connection.settings_dict
    env = dict(os.environ)
    if s.get("PASSWORD"):
        env["PGPASSWORD"] = str(s["PASSWORD"])
    args = args or ["pg_dump", "--format=custom", "--no-owner"]
    if s.get("HOST"):
        args += ["--host", str(s["HOST"])]
    if s.get("PORT"):
        args += ["--port", str(s["PORT"])]
    if s.get("USER"):
        args += ["--username", str(s["USER"])]
    return [*args, str(s["NAME"])], env


def pg_restore_args() -> tuple[list[str], dict[str, str]]:
    """``pg_restore`` into the current database, replacing its objects in one transaction (the archive follows)."""
    args, env = _pg_env(["pg_restore", "--clean", "--if-exists", "--single-transaction", "--no-owner"])
    return [*args[:-1], "--dbname", args[-1]], env


def pg_dump_available() -> bool:
    return shutil.which("pg_dump") is not None


def pg_dump_stream(chunk: int = 64 * 1024) -> Iterator[bytes]:
    args, env = _pg_env()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    try:
        while data := proc.stdout.read(chunk):
            yield data
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            raise RuntimeError(f"pg_dump exited with {proc.returncode}")


def pg_dump_to(destination: Path) -> Path:
    args, env = _pg_env()
    subprocess.run([*args, "--file", str(destination)], env=env, check=True)
    return destination
