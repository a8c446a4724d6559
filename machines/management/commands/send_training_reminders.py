"""``manage.py send_training_reminders``: tell members their trainings lapse soon (run it daily from the timer)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from machines import training


class Command(BaseCommand):
    help = (
        "E-mail each member whose authorizations lapse within TRAINING_REMINDER_DAYS (default 14): one message "
        "listing them all, in the member's language, at most one a day per member, only to members with an e-mail "
        "and 'training reminders' ticked. --dry-run lists who would be mailed and sends nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="List the reminders; send nothing.")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["dry_run"]:
            due = training.due_reminders()
            for member, authorizations in due.items():
                machines = ", ".join(f"{a.machine} ({training.expiry_text(a)})" for a in authorizations)
                self.stdout.write(f"{member.email} [{training.language_of(member)}]: {machines}")
            self.stdout.write(f"{len(due)} member(s) to remind (those reminded today are skipped when sending).")
            return
        result = training.send_reminders()
        self.stdout.write(
            f"Training reminders: {result.sent} sent, {result.failed} failed, {result.skipped} already reminded today."
        )
