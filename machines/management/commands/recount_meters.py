"""``manage.py recount_meters``: re-derive every hour meter and maintenance counter from the usage history."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from machines import services
from machines.models import Machine


class Command(BaseCommand):
    help = (
        "Recount each machine's hour meter, its maintenance counters and its interventions' readings from the "
        "recorded uses (the definition in machines/services.py). With --check, change nothing and exit 1 if any "
        "stored value differs from the recount."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--check", action="store_true", help="Report differences only; exit 1 if any.")

    def handle(self, *args: Any, **options: Any) -> None:
        differing = 0
        for machine in Machine.objects.order_by("pk"):
            if options["check"]:
                differences = services.meter_differences(machine)
                if differences:
                    differing += 1
                    self.stdout.write(f"{machine.pk} {machine.name}: " + "; ".join(differences))
            else:
                services.recount_machine(machine.pk)
        if options["check"]:
            if differing:
                raise CommandError(f"{differing} machine(s) differ from a recount of their history")
            self.stdout.write("Every meter and counter equals the recount of the history.")
        else:
            self.stdout.write(f"Recounted {Machine.objects.count()} machine(s).")
