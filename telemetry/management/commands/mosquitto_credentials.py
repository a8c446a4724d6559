"""``manage.py mosquitto_credentials``: write Mosquitto's password and ACL files from the database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from machines.models import Machine
from telemetry import credentials
from telemetry.models import SwitchCredential


class Command(BaseCommand):
    help = (
        "Write the Mosquitto files of deploy/mosquitto/fabomatic.conf: the devices' password file (one account "
        "board-<id> per machine: publish only to <topic>/<id>, read only <topic>/<id>/reply and /request; one "
        "account switch-<id> per declared Shelly switch: read only its topic, to which the machine's board may "
        "publish), the backend's password file (the account of MQTT_BROKER_URL) and the ACL file (the backend has "
        "everything under <topic>/# and stats/#). Machines without a secret get one, printed ONCE here, as does "
        "each new switch. Reload Mosquitto afterwards (systemctl reload mosquitto)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        default = credentials.default_paths()
        parser.add_argument("--password-file", type=Path, default=default.password)
        parser.add_argument("--backend-password-file", type=Path, default=default.backend_password)
        parser.add_argument("--acl-file", type=Path, default=default.acl)
        parser.add_argument(
            "--rotate", type=int, nargs="+", metavar="MACHINE_ID", default=[], help="Issue new secrets for these."
        )
        parser.add_argument(
            "--switch",
            nargs=2,
            action="append",
            default=[],
            metavar=("MACHINE_ID", "TOPIC"),
            help="Declare (or move) the Shelly power switch of a machine: the topic its board publishes on/off to "
            "(docs/protocol.md §2.9). A new switch gets the account switch-<id>.",
        )
        parser.add_argument("--remove-switch", type=int, nargs="+", metavar="MACHINE_ID", default=[])
        parser.add_argument(
            "--rotate-switch", type=int, nargs="+", metavar="MACHINE_ID", default=[], help="New switch secrets."
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        # All or nothing: a refused option must not leave new secrets in the database that were never shown.
        with transaction.atomic():
            issued = self._update(opts)
        if credentials.backend_account() is None:
            self.stderr.write(
                "MQTT_BROKER_URL has no user: the bridge will not be able to log in to a broker with "
                "anonymous access off. Use mqtt://USER:PASSWORD@127.0.0.1:1884."
            )
        files = credentials.write_files(opts["password_file"], opts["acl_file"], opts["backend_password_file"])
        for item in issued:
            self.stdout.write(f"{item.username}\t{item.secret}\t# {item.machine} (shown once: copy it now)")
        self.stdout.write(
            f"Wrote {files.password}, {files.backend_password} and {files.acl}; {len(issued)} new secrets."
        )

    def _update(self, opts: dict[str, Any]) -> list[credentials.IssuedSecret]:
        issued = credentials.issue_missing()
        for m in Machine.objects.filter(pk__in=opts["rotate"]).order_by("pk"):
            if all(i.machine.pk != m.pk for i in issued):
                issued.append(credentials.issue(m))
        for machine_id in opts["remove_switch"]:
            credentials.remove_switch(_machine(machine_id))
        for machine_id, topic in opts["switch"]:
            try:
                new = credentials.declare_switch(_machine(machine_id), topic)
            except ValidationError as exc:
                raise CommandError(f"Switch topic {topic!r}: {' '.join(exc.messages)}") from None
            issued += [new] if new else []
        for machine_id in opts["rotate_switch"]:
            try:
                issued.append(credentials.issue_switch(_machine(machine_id)))
            except SwitchCredential.DoesNotExist:
                raise CommandError(f"Machine {machine_id} has no switch: declare it with --switch") from None
        return issued


def _machine(machine_id: object) -> Machine:
    try:
        return Machine.objects.get(pk=int(str(machine_id)))
    except (ValueError, Machine.DoesNotExist):
        raise CommandError(f"No machine {machine_id}") from None
