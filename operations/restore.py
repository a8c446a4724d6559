"""Restore the database from an uploaded backup, while the bridge and the portal keep running.

The upload is checked before anything is touched (:func:`inspect`): a SQLite file (raw or gzipped, as
``manage.py backup`` and the System page write them) whose tables and columns are this project's, or, on
PostgreSQL, a ``pg_dump --format=custom`` archive holding this project's tables. Then (:func:`restore`) the current
database is backed up into ``$FABOMATIC_DATA_DIR/backups/`` and the upload replaces it:

- SQLite: the online backup API copies the upload *into* the live file, page by page under SQLite's own locking,
  so every other connection (the bridge's, the portal's) reads the restored data on its next transaction; no
  process is restarted. ``migrate`` then brings an older backup's schema up to date.
- PostgreSQL: ``pg_restore --clean --if-exists --single-transaction --no-owner``.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.core.management import call_command
from django.db import close_old_connections, connection
from django.utils import timezone
from django.utils.translation import gettext as _

from . import backup

logger = logging.getLogger(__name__)

SQLITE_MAGIC = b"SQLite format 3\x00"
PGDUMP_MAGIC = b"PGDMP"
GZIP_MAGIC = b"\x1f\x8b"


class Refused(ValueError):
    """The upload is not a backup of this project's database; the message says why, for staff."""


@dataclass
class Backup:
    """A checked upload, ready to restore."""

    path: Path
    kind: str  # "sqlite" or "pgdump"
    counts: dict[str, int] = field(default_factory=dict)  # rows of a few tables, for the confirmation page


def expected_tables() -> dict[str, set[str]]:
    """This project's tables and their columns (from the models: what the code needs to find)."""
    tables: dict[str, set[str]] = {}
    for model in apps.get_models(include_auto_created=True):
        if model._meta.managed and not model._meta.proxy:
            tables[model._meta.db_table] = {f.column for f in model._meta.local_concrete_fields}
    return tables


PENDING_SECONDS = 3600  # an upload never confirmed is deleted after this long


def pending_dir() -> Path:
    """Where uploads wait for their confirmation; those older than PENDING_SECONDS are removed on the way."""
    directory = Path(settings.DATA_DIR) / "restore"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cutoff = time.time() - PENDING_SECONDS
    for stale in directory.iterdir():
        with contextlib.suppress(OSError):
            if stale.stat().st_mtime < cutoff:
                stale.unlink()
    return directory


def save_upload(chunks: object, name: str) -> Path:
    """Write an upload (its ``chunks()``) to the data directory, unzipped if gzipped; returns the file."""
    raw = pending_dir() / f"{name}.upload"
    with raw.open("wb") as out:
        for chunk in chunks:  # type: ignore[attr-defined]
            out.write(chunk)
    with raw.open("rb") as f:
        zipped = f.read(2) == GZIP_MAGIC
    if not zipped:
        return raw
    plain = pending_dir() / f"{name}.plain"
    try:
        with gzip.open(raw, "rb") as src, plain.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    except (OSError, EOFError) as exc:
        plain.unlink(missing_ok=True)
        raise Refused(_("The file looks gzipped but cannot be unpacked: %(error)s") % {"error": exc}) from exc
    finally:
        raw.unlink(missing_ok=True)
    return plain


def inspect(path: Path) -> Backup:
    """Check that ``path`` is a backup of this project's database for the engine in use; raise Refused if not."""
    with path.open("rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if backup.is_sqlite():
        if not head.startswith(SQLITE_MAGIC):
            raise Refused(_("This is not a SQLite database file (a backup of this portal ends in .sqlite3)."))
        return _inspect_sqlite(path)
    if connection.vendor == "postgresql":
        if not head.startswith(PGDUMP_MAGIC):
            raise Refused(_("This is not a pg_dump archive (a backup of this portal ends in .pgdump)."))
        return _inspect_pgdump(path)
    raise Refused(_("Restoring is not supported on this database engine."))


def _inspect_sqlite(path: Path) -> Backup:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            if db.execute("PRAGMA quick_check").fetchone() != ("ok",):
                raise Refused(_("The SQLite file is damaged (its integrity check failed)."))
            found = {
                name: {row[1] for row in db.execute(f'PRAGMA table_info("{name}")')}
                for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            _check_schema(found)
            counts = {
                label: db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
                for label, table in _counted_tables().items()
            }
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise Refused(_("The file cannot be read as a SQLite database: %(error)s") % {"error": exc}) from exc
    return Backup(path=path, kind="sqlite", counts=counts)


def _check_schema(found: dict[str, set[str]]) -> None:
    """Refuse a database of another schema. Newer columns may be missing (``migrate`` adds them), tables not."""
    if "django_migrations" not in found:
        raise Refused(_("This SQLite database is not a Fab-O-Matic database (it has no Django migrations)."))
    core = [m._meta.db_table for m in _core_models()]
    missing = [t for t in core if t not in found]
    if missing:
        raise Refused(
            _("This database is not a Fab-O-Matic backup: tables %(tables)s are missing.")
            % {"tables": ", ".join(missing)}
        )


def _core_models() -> list:
    from machines.models import Machine, Use
    from members.models import Card, Member

    return [Member, Card, Machine, Use]


def _counted_tables() -> dict[str, str]:
    return {str(m._meta.verbose_name_plural): m._meta.db_table for m in _core_models()}


def _inspect_pgdump(path: Path) -> Backup:
    if shutil.which("pg_restore") is None:
        raise Refused(_("pg_restore is not installed on the server: install postgresql-client."))
    done = subprocess.run(["pg_restore", "--list", str(path)], capture_output=True, text=True)
    if done.returncode:
        raise Refused(_("pg_restore cannot read this archive: %(error)s") % {"error": done.stderr.strip()[:300]})
    listed = {parts[-2] for line in done.stdout.splitlines() if " TABLE " in line and len(parts := line.split()) >= 2}
    missing = [m._meta.db_table for m in _core_models() if m._meta.db_table not in listed]
    if missing:
        raise Refused(
            _("This archive is not a Fab-O-Matic backup: tables %(tables)s are missing.")
            % {"tables": ", ".join(missing)}
        )
    return Backup(path=path, kind="pgdump")


def backup_current() -> Path:
    """A backup of the database as it is now, in ``$FABOMATIC_DATA_DIR/backups/``; returns its path."""
    directory = Path(settings.DATA_DIR) / "backups"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
    if backup.is_sqlite():
        return backup.sqlite_backup(directory / f"fabomatic-{stamp}-before-restore.sqlite3")
    return backup.pg_dump_to(directory / f"fabomatic-{stamp}-before-restore.pgdump")


def restore(checked: Backup) -> Path:
    """Back up the current database, then replace it with ``checked``; returns the safety backup's path."""
    saved = backup_current()
    if checked.kind == "sqlite":
        connection.close()  # this thread's connection must not hold a read transaction during the copy
        source = sqlite3.connect(f"file:{checked.path}?mode=ro", uri=True)
        target = sqlite3.connect(connection.settings_dict["NAME"], timeout=30)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
    else:
        args, env = backup.pg_restore_args()
        subprocess.run(args + [str(checked.path)], env=env, check=True, capture_output=True)
    close_old_connections()
    call_command("migrate", interactive=False, verbosity=0, stdout=StringIO())  # an older backup's schema
    return saved
