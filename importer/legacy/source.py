"""The old FabOMatic database as a source: opened read-only, its schema checked, its values parsed."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

# Rows read from the old database, and rows written here, per round trip.
BATCH = 2000

# Tables and columns every FabOMatic schema has had since the initial Alembic revision (2dc275252e0e).
REQUIRED_COLUMNS: dict[str, set[str]] = {
    "roles": {"role_id", "role_name", "authorize_all", "reserved", "maintenance", "backend_admin"},
    "users": {"user_id", "name", "surname", "role_id", "card_uuid", "disabled", "deleted", "email"},
    "machine_types": {"type_id", "type_name", "type_timeout_min"},
    "machines": {"machine_id", "machine_name", "machine_type_id", "machine_hours", "blocked", "last_seen"},
    "authorizations": {"user_id", "machine_id"},
    "maintenances": {"maintenance_id", "hours_between", "description", "machine_id"},
    "interventions": {"intervention_id", "maintenance_id", "machine_id", "user_id", "timestamp"},
    "uses": {"use_id", "user_id", "machine_id", "start_timestamp", "last_seen", "end_timestamp"},
    "unknown_cards": {"id", "card_uuid", "timestamp", "machine_id"},
}
# Added by 123b2cca325f (0.1.8).
BOARD_COLUMNS = {"board_id", "machine_id", "ip_address", "fw_version", "last_seen"}


class LegacyImportError(Exception):
    """The file is not a readable FabOMatic database; nothing was written."""


def open_legacy(path: str | Path) -> sqlite3.Connection:
    """Open the old database read-only: the file is never modified."""
    p = Path(path)
    if not p.is_file():
        raise LegacyImportError(f"{path}: no such file.")
    try:
        con = sqlite3.connect(f"file:{quote(str(p.resolve()))}?mode=ro", uri=True)
        con.row_factory = sqlite3.Row
        result = con.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as exc:
        raise LegacyImportError(f"{path}: not an SQLite database ({exc}).") from exc
    if [tuple(r) for r in result] != [("ok",)]:
        con.close()
        detail = "; ".join(str(r[0]) for r in result[:3])
        raise LegacyImportError(f"{path}: the SQLite file is corrupt ({detail}).")
    return con


def check_schema(con: sqlite3.Connection) -> dict[str, set[str]]:
    """Columns per table (lower-case); raises LegacyImportError when FabOMatic tables or columns are missing."""
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
        columns = {
            name.lower(): {str(c[1]).lower() for c in con.execute(f'PRAGMA table_info("{name}")')} for name in names
        }
    except sqlite3.Error as exc:
        raise LegacyImportError(f"cannot read the database schema ({exc}).") from exc
    missing_tables = sorted(set(REQUIRED_COLUMNS) - set(columns))
    if missing_tables:
        raise LegacyImportError(
            f"not a FabOMatic database: table(s) {', '.join(missing_tables)} missing; nothing was imported."
        )
    for table, required in REQUIRED_COLUMNS.items():
        if missing := sorted(required - columns[table]):
            raise LegacyImportError(
                f"not a FabOMatic database: table {table} lacks {', '.join(missing)}; nothing was imported."
            )
    if "boards" in columns and not BOARD_COLUMNS <= columns["boards"]:
        del columns["boards"]
    return columns


def schema_version(con: sqlite3.Connection, columns: dict[str, set[str]]) -> str:
    if "alembic_version" not in columns:
        return "unknown"
    row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(row[0]) if row else "unknown"


@dataclass(eq=False)
class Source:
    """An open old database (``open_legacy``) and its columns per table (``check_schema``)."""

    con: sqlite3.Connection
    columns: dict[str, set[str]]

    def col(self, table: str, column: str, default: str = "NULL") -> str:
        """The column if this schema has it, else a constant: older schemas lack later columns."""
        return column if column in self.columns[table] else f"{default} AS {column}"

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> Iterator[sqlite3.Row]:
        cursor = self.con.execute(sql, params)
        while chunk := cursor.fetchmany(BATCH):
            yield from chunk


# --- values as the old backend stored them ------------------------------------------------------------------------


def as_datetime(value: Any) -> datetime | None:
    """An old epoch float (seconds) as an aware UTC datetime; None when absent or not a number."""
    if value is None or value == "":
        return None
    try:
        return datetime.fromtimestamp(float(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def as_int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


def as_text(value: Any, limit: int) -> str:
    return ("" if value is None else str(value)).strip()[:limit]
