from __future__ import annotations

from argparse import ArgumentParser

from django.core.management.base import BaseCommand, CommandError

from importer.legacy import ImportReport, LegacyImportError, import_database


class Command(BaseCommand):
    help = (
        "Import a database of the old FabOMatic backend (its SQLite file, opened read-only): roles, members and "
        "their cards, machine types, machines with their ids, authorizations, maintenance plans, interventions, "
        "uses, unknown cards and boards. Safe to run again: rows imported before are recognised and left alone. "
        "Everything happens in one transaction: a file that is not a FabOMatic database writes nothing."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("path", help="the old database file, e.g. database.sqldb")
        parser.add_argument(
            "--dry-run", action="store_true", help="import inside a transaction, report the counts, roll back"
        )

    def handle(self, *args: object, **options: object) -> None:
        try:
            report = import_database(str(options["path"]), dry_run=bool(options["dry_run"]))
        except LegacyImportError as exc:
            raise CommandError(str(exc)) from exc
        self.write_report(report)

    def write_report(self, report: ImportReport) -> None:
        out = self.stdout
        out.write(f"FabOMatic database {report.path} (schema {report.schema_version})")
        if report.dry_run:
            out.write(self.style.WARNING("Dry run: nothing was written. It would import:"))
        out.write(f"{'':20} {'old rows':>9} {'created':>9} {'present':>9} {'skipped':>9}")
        for name, t in report.tallies.items():
            out.write(f"{name:20} {t.found:>9} {t.created:>9} {t.existing:>9} {t.skipped:>9}")
        if report.warnings:
            out.write(self.style.WARNING(f"\n{len(report.warnings)} warning(s):"))
            for message in report.warnings:
                out.write(f"  - {message}")
        if report.staff_without_password:
            out.write(
                self.style.WARNING(
                    "\nPortal users imported without a password (the old hashes cannot be used here). "
                    'Each of them must use "Forgotten your password?" on the login page:'
                )
            )
            for email in report.staff_without_password:
                out.write(f"  - {email}")
        verb = "would be created" if report.dry_run else "created"
        out.write(self.style.SUCCESS(f"\nDone: {report.created} row(s) {verb}."))
