"""``manage.py mosquitto_credentials``: write Mosquitto's password and ACL files from the database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from telemetry import credentials


class Command(BaseCommand):
    help = (
        "Write the Mosquitto password file and ACL file: one account board-<id> per machine (publish only to "
        "<topic>/<id>, read only <topic>/<id>/reply and /request) and the backend account of MQTT_BROKER_URL "
        "(everything under <topic>/# and stats/#). Machines without a secret get one, printed ONCE here. "
        "Reload Mosquitto afterwards (systemctl reload mosquitto)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        default_password, default_acl = credentials.default_paths()
        parser.add_argument("--password-file", type=Path, default=default_password)
        parser.add_argument("--acl-file", type=Path, default=default_acl)
        parser.add_argument(
            "--rotate", type=int, nargs="+", metavar="MACHINE_ID", default=[], help="Issue new secrets for these."
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        from machines.models import Machine

        issued = credentials.issue_missing()
        for machine in Machine.objects.filter(pk__in=opts["rotate"]).order_by("pk"):
            if all(i.machine.pk != machine.pk for i in issued):
                issued.append(credentials.issue(machine))
        if credentials.backend_account() is None:
            self.stderr.write(
                "MQTT_BROKER_URL has no user: the bridge will not be able to log in to a broker with "
                "anonymous access off. Use mqtt://USER:PASSWORD@HOST:1883."
            )
        password_file, acl_file = credentials.write_files(opts["password_file"], opts["acl_file"])
        for item in issued:
            self.stdout.write(f"{item.username}\t{item.secret}\t# {item.machine} (shown once: copy it now)")
        self.stdout.write(f"Wrote {password_file} and {acl_file}; {len(issued)} new board secrets.")
