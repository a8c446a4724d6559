"""``import_database``: the old file opened and checked (``source``), then every step in one transaction."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

from django.db import transaction
from django.utils.translation import gettext_noop

from members.models import Member
from operations import audit

from . import counters, history, machines, people
from .run import ImportReport, Run
from .source import LegacyImportError, Source, check_schema, open_legacy, schema_version

logger = logging.getLogger(__name__)

# In this order: each step uses the id maps of the ones before it.
STEPS: tuple[Callable[[Run], None], ...] = (
    people.roles,
    machines.machine_types,
    people.members,  # and their cards
    machines.machines,
    machines.authorizations,
    machines.plans,
    history.interventions,
    history.uses,
    history.unknown_cards,
    history.boards,
    counters.maintenance_counters,
    counters.rebase_meters,
)


def import_database(path: str | Path, *, dry_run: bool = False) -> ImportReport:
    """Import the FabOMatic database at ``path``; with ``dry_run`` everything is rolled back at the end.

    Raises ``LegacyImportError`` (and writes nothing) for a file that is not a readable FabOMatic database.
    """
    con = open_legacy(path)
    try:
        columns = check_schema(con)
        report = ImportReport(path=str(path), schema_version=schema_version(con, columns), dry_run=dry_run)
        try:
            # One audit entry for the whole import (below), not one per imported row.
            with transaction.atomic(), audit.paused():
                run = Run(Source(con, columns), report)
                for step in STEPS:
                    step(run)
                if dry_run:
                    transaction.set_rollback(True)
        except sqlite3.Error as exc:  # e.g. a page that fails to read half-way: the transaction is rolled back
            raise LegacyImportError(f"{path}: cannot read the old database ({exc}); nothing was imported.") from exc
    finally:
        con.close()
    logger.info(
        "%s %s: %d row(s) created, %d warning(s)",
        "dry run of" if dry_run else "imported",
        path,
        report.created,
        len(report.warnings),
    )
    for message in report.warnings:
        logger.debug("import %s: %s", path, message)
    if not dry_run:
        audit.record(
            Member,
            message=gettext_noop("Import from FabOMatic (%(file)s): rows created: %(count)d"),
            params={"file": Path(path).name, "count": report.created},
            changes={"warnings": [None, report.warnings[:200]]},
        )
    return report
