"""``manage.py backup``: a consistent copy of the database, safe while everything runs (deploy/backup.sh)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from operations import backup


class Command(BaseCommand):
    help = (
        "Back up the database: SQLite through its online backup API (a consistent snapshot while the bridge "
        "writes), PostgreSQL with pg_dump --format=custom. Prints the path of the file written."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--output", type=Path, help="File to write (default: ./fabomatic-<timestamp>.sqlite3)")

    def handle(self, *args: Any, **opts: Any) -> None:
        stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
        if backup.is_sqlite():
            output = opts["output"] or Path(f"fabomatic-{stamp}.sqlite3")
            backup.sqlite_backup(output)
        else:
            if not backup.pg_dump_available():
                raise CommandError("pg_dump is not installed (apt install postgresql-client)")
            output = opts["output"] or Path(f"fabomatic-{stamp}.pgdump")
            backup.pg_dump_to(output)
        self.stdout.write(str(output))
