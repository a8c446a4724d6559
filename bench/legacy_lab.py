"""An old-FabOMatic (Flask/SQLAlchemy 1.0.7) SQLite database of a big lab, for ``manage.py import_fabomatic``.

    .venv/bin/python -m bench.legacy_lab OUT.sqldb [--uses 200000] [--machines 1000] [--members 2000]

The schema is copied from the archived 1.0.7 sample (tests/data/fabomatic/database-1.0.7-sample.sqldb: its tables,
columns, indexes, Alembic revision, roles and machine types); the rows are that sample scaled up, deterministic
(no random numbers; times relative to midnight UTC of the day), built by a few INSERT … SELECT statements over
recursive CTEs (~1 s for 200,000 uses):

- users: the sample's "Anonymous" and "admin", then ``members`` members; member m (old user_id m + 2) holds card
  ``card_uid(m)``; every 50th is "Fab Staff", every 10th "Fab Users" (authorize all, as the old seed had it), the
  others "Members"; a few are disabled, deleted, without a card (m > machines only) or with an invalid e-mail;
- machines 1..``machines``, the sample's names and types in turn (type 3, "3D printer", needs no authorization);
  every 97th blocked; their hour meter is the sum of their closed uses, as the old backend kept it;
- authorizations: member m on machines m, m + 137, m + 274, … (mod ``machines``): five each, member m ≤ machines is
  authorized on machine m (the benchmark's board m swipes card m);
- two maintenance items per machine with four interventions each over the three years;
- ``uses`` uses spread over three years in id order (as a real history grows), each by a member authorized on the
  machine, 1 min to 2 h long; the last five are still open (boards that were on when the file was copied);
- 300 unknown cards; one board per machine plus 100 older boards superseded by a newer one.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "fabomatic" / "database-1.0.7-sample.sqldb"
DAY = 86400
SPAN = 3 * 365 * DAY
OPEN_USES = 5


def card_uid(member: int) -> str:
    """The card of member ``member`` (the benchmark's ``uid_for``)."""
    return f"{0x10000000 + member:08x}"


def _seq(name: str, count: str) -> str:
    return f"WITH RECURSIVE {name}(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM {name} WHERE i < {count}) "


def build(path: Path, *, uses: int = 200_000, machines: int = 1000, members: int = 2000) -> dict[str, int]:
    """Write the old database to ``path`` (replaced); returns the row count of each table."""
    if path.exists():
        path.unlink()
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode = OFF")
    db.execute("PRAGMA synchronous = OFF")
    names, admin = _schema(db)
    now = int(time.time()) // DAY * DAY  # midnight UTC: the same file all day
    p = {"now": now, "span": SPAN, "uses": uses, "machines": machines, "members": members, "open": OPEN_USES}
    _people(db, p, admin)
    _machines(db, p, names)
    _history(db, p)
    _boards(db, p)
    db.commit()
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    counts = {t: db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    db.close()
    return counts


def _schema(db: sqlite3.Connection) -> tuple[list[str], list[tuple]]:
    """The sample's tables, its roles and machine types; returns its machine names and its two admins' rows."""
    sample = sqlite3.connect(f"file:{SAMPLE}?mode=ro", uri=True)
    ddl = sample.execute(
        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
        "ORDER BY type = 'index', rowid"
    ).fetchall()
    for (sql,) in ddl:
        db.execute(sql)
    for table in ("alembic_version", "roles", "machine_types"):
        rows = sample.execute(f"SELECT * FROM {table}").fetchall()
        db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
    names = [
        re.sub(r"\s*#\d+$", "", r[0]) for r in sample.execute("SELECT machine_name FROM machines ORDER BY machine_id")
    ]
    admin = sample.execute("SELECT * FROM users WHERE user_id IN (1, 2) ORDER BY user_id").fetchall()
    sample.close()
    return names, admin


def _people(db: sqlite3.Connection, p: dict[str, int], admin: list[tuple]) -> None:
    db.executemany(f"INSERT INTO users VALUES ({', '.join('?' * len(admin[0]))})", admin)
    # Old user_id m + 2 is member m. Roles: 2 Fab Staff, 3 Fab Users (authorize all), 5 Members.
    db.execute(
        _seq("s", ":members")
        + """
        INSERT INTO users (user_id, name, surname, role_id, card_UUID, disabled, deleted, password_hash, email,
                           receive_weekly_summary)
        SELECT i + 2, 'Member' || i, 'Rossi' || (i % 97),
               CASE WHEN i % 50 = 0 THEN 2 WHEN i % 10 = 0 THEN 3 ELSE 5 END,
               CASE WHEN i > :machines AND i % 37 = 0 THEN NULL ELSE printf('%08x', 268435456 + i) END,
               i % 211 = 0, i % 307 = 0, NULL,
               CASE WHEN i % 499 = 0 THEN 'member' || i || ' at lab' ELSE 'member' || i || '@lab.example' END,
               i % 5 = 0
        FROM s
        """,
        p,
    )


def _machines(db: sqlite3.Connection, p: dict[str, int], names: list[str]) -> None:
    now, machines = p["now"], p["machines"]
    db.executemany(
        "INSERT INTO machines VALUES (?, ?, ?, 0.0, ?, ?)",
        [(i, f"{names[i % len(names)]} #{i}", 1 + i % 3, i % 97 == 0, now - DAY - i) for i in range(1, machines + 1)],
    )
    # Member m is authorized on machine 1 + (m - 1 + 137 k) mod machines, k = 0..4.
    db.execute(
        _seq("s", ":members")
        + """, k(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM k WHERE j < 4)
        INSERT OR IGNORE INTO authorizations (user_id, machine_id)
        SELECT i + 2, 1 + (i - 1 + 137 * j) % :machines FROM s, k ORDER BY i, j
        """,
        p,
    )
    db.execute(
        _seq("s", ":machines")
        + """
        INSERT INTO maintenances (hours_between, description, machine_id, attachment, lcd_message, instructions_url)
        SELECT h, d, i, NULL, l, u FROM s, (SELECT 40.0 AS h, 'Clean lens and mirrors' AS d, 'Clean lens' AS l,
                                                  'https://example.org/lens' AS u
                                           UNION ALL SELECT 200.0, 'Replace nozzle', 'New nozzle', '')
        ORDER BY i, h
        """,
        p,
    )


def _history(db: sqlite3.Connection, p: dict[str, int]) -> None:
    # Four interventions per item, 90 days apart, by a staff member (old user_id 52: member 50, Fab Staff).
    db.execute(
        """
        WITH RECURSIVE k(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM k WHERE j < 4)
        INSERT INTO interventions (maintenance_id, machine_id, user_id, timestamp, replay)
        SELECT maintenance_id, machine_id, 52, :now - 90 * 86400 * j - machine_id * 60.0, 0
        FROM maintenances, k ORDER BY j DESC, maintenance_id
        """,
        p,
    )
    # Use i: member m = 1 + (i·7919 mod members) on the (i mod 5)-th machine m is authorized on; started
    # span·(1 − i/uses) + 2 h ago, 60–7,200 s long; the last OPEN_USES still open (last heartbeat 10 min ago).
    db.execute(
        _seq("s", ":uses")
        + """, u(i, m, start, d) AS (
            SELECT i, 1 + (i * 7919) % :members, :now - (:span * (:uses - i)) / :uses - 7200 + (i % 13) * 0.37,
                   60 + (i * 104729) % 7141
            FROM s)
        INSERT INTO uses (use_id, user_id, machine_id, start_timestamp, last_seen, end_timestamp, replay)
        SELECT i, m + 2, 1 + (m - 1 + 137 * (i % 5)) % :machines, start,
               CASE WHEN i > :uses - :open THEN :now - 600 ELSE start + d - i % 30 END,
               CASE WHEN i > :uses - :open THEN NULL ELSE start + d END,
               i % 50 = 0
        FROM u
        """,
        p,
    )
    db.execute(
        """
        WITH h(machine_id, hours) AS (
            SELECT machine_id, SUM(end_timestamp - start_timestamp) / 3600.0 FROM uses
            WHERE end_timestamp IS NOT NULL GROUP BY machine_id)
        UPDATE machines SET machine_hours = h.hours FROM h WHERE h.machine_id = machines.machine_id
        """
    )
    db.execute(
        _seq("s", "300") + "INSERT INTO unknown_cards (card_UUID, timestamp, machine_id) "
        "SELECT printf('DEAD%04X', i), :now - i * 3600.5, 1 + (i * 31) % :machines FROM s",
        p,
    )


def _boards(db: sqlite3.Connection, p: dict[str, int]) -> None:
    # One board per machine (board_id = machine id), then 100 older ones that a newer board replaced.
    db.execute(
        _seq("s", ":machines")
        + """
        INSERT INTO boards (board_id, machine_id, ip_address, fw_version, last_seen, serial, heap)
        SELECT i, i, '10.0.' || (i / 250) || '.' || (1 + i % 250), '1.0.7,esp32', :now - 86400 - i,
               printf('%012x', 187649984473770 + i), 120000 + i % 1000
        FROM s
        """,
        p,
    )
    db.execute(
        _seq("s", "100") + "INSERT INTO boards (machine_id, ip_address, fw_version, last_seen, serial, heap) "
        "SELECT 1 + (i * 7) % :machines, '10.1.0.' || i, '0.9.2,esp32', :now - 400 * 86400, '?', NULL FROM s",
        p,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.legacy_lab", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--uses", type=int, default=200_000)
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--members", type=int, default=2000)
    args = parser.parse_args(argv)
    t = time.perf_counter()
    counts = build(args.out, uses=args.uses, machines=args.machines, members=args.members)
    print(f"{args.out}: {', '.join(f'{k} {v:,}' for k, v in counts.items())} in {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
