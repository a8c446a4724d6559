"""``manage.py send_weekly_summary``: the lab-wide weekly e-mail (run it Sunday 09:00 from the timer or cron)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from machines import reports


class Command(BaseCommand):
    help = (
        "E-mail the weekly summary (hours per machine over the last 7 days, maintenance overdue and due soon, "
        "unrecognised cards) in HTML and text to every active member with an e-mail who ticked 'weekly summary'. "
        "Language: --language, else WEEKLY_SUMMARY_LANGUAGE, else LANGUAGE_CODE. --dry-run prints it instead."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Print recipients and the message; send nothing.")
        parser.add_argument("--language", choices=reports.LANGUAGES)
        parser.add_argument("--html", action="store_true", help="With --dry-run: print the HTML body too.")

    def handle(self, *args: Any, **opts: Any) -> None:
        language = opts["language"] or reports.default_language()
        if opts["dry_run"]:
            mail = reports.render(reports.build_summary(), language)
            people = reports.recipients()
            self.stdout.write(f"Subject: {mail.subject}")
            self.stdout.write(f"To ({len(people)}): {', '.join(m.email or '' for m in people) or '-'}")
            self.stdout.write("")
            self.stdout.write(mail.text)
            if opts["html"]:
                self.stdout.write(mail.html)
            return
        result = reports.send_weekly_summary(language=language)
        self.stdout.write(f"Weekly summary: {result.sent} sent, {result.failed} failed.")
