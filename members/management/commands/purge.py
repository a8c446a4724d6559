"""``manage.py purge``: the daily GDPR clean-up (run it from cron or the systemd timer)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from members.gdpr import BATCH_SIZE, purge

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Apply the retention rules. Uses and interventions older than RETENTION_DAYS (default 365) move to the "
        "anonymous member (machine hours and maintenance history are kept); unknown cards older than "
        "UNKNOWN_CARD_RETENTION_DAYS (default 30) are deleted; refused swipes older than REFUSAL_RETENTION_DAYS "
        "(default 90) are deleted; closed fault reports and confirmed checks after use older than RETENTION_DAYS "
        "are deleted; members deleted more than RETENTION_DAYS ago are "
        "erased (name, e-mail, cards, and every mention in the admin history); login records and admin history "
        "entries older than RETENTION_DAYS are deleted; the webhook delivery log older than "
        "WEBHOOK_LOG_DAYS (default 30) is deleted. Idempotent: safe to run daily from cron."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Count what would change; write nothing.")
        parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="Rows per transaction.")
        parser.add_argument(
            "--progress",
            choices=["auto", "bar", "log", "none"],
            default="auto",
            help="A progress bar on a terminal, plain log lines otherwise (auto).",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        mode = opts["progress"]
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        reporter = _BarProgress() if mode == "bar" else _LogProgress(self) if mode == "log" else None
        try:
            result = purge(
                dry_run=opts["dry_run"],
                batch_size=opts["batch_size"],
                on_progress=reporter,
            )
        finally:
            if isinstance(reporter, _BarProgress):
                reporter.close()
        if opts["verbosity"] >= 1 and opts["dry_run"]:
            self.stdout.write(
                f"History cutoff {result.cutoffs['history']:%Y-%m-%d %H:%M}, "
                f"unknown cards cutoff {result.cutoffs['unknown_cards']:%Y-%m-%d %H:%M} "
                f"(RETENTION_DAYS={settings.RETENTION_DAYS}, "
                f"UNKNOWN_CARD_RETENTION_DAYS={settings.UNKNOWN_CARD_RETENTION_DAYS})"
            )
        self.stdout.write(result.summary())
        if not opts["dry_run"]:
            from integrations.delivery import purge_log

            self.stdout.write(f"Webhook log: {purge_log()} rows older than WEBHOOK_LOG_DAYS deleted.")


class _BarProgress:
    """One tqdm bar per step, on stderr (a terminal)."""

    def __init__(self) -> None:
        self.step: str | None = None
        self.bar: Any = None

    def __call__(self, step: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if step != self.step:
            self.close()
            self.step = step
            self.bar = tqdm(total=total, desc=step, unit="rows", leave=True)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _LogProgress:
    """Plain lines for cron and journald: one per 10 % of each step, and at the end of it."""

    def __init__(self, command: BaseCommand) -> None:
        self.command = command
        self.last: dict[str, int] = {}

    def __call__(self, step: str, done: int, total: int) -> None:
        tenth = 10 if total == 0 else done * 10 // total
        if self.last.get(step) == tenth:
            return
        self.last[step] = tenth
        self.command.stderr.write(f"purge {step}: {done}/{total}")
