"""``manage.py ota_rollout``: run the firmware rollouts started in the portal until none is left (telemetry/rollout.py).

The portal starts it by itself; run it by hand (or from a timer) to resume rollouts after a reboot. Only one runs at
a time (a lock file in the data directory); a second one exits at once.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from telemetry import rollout


class Command(BaseCommand):
    help = "Push the firmware of the running rollouts to the boards (espota), then exit."

    def handle(self, *args: Any, **options: Any) -> None:
        if not rollout.run():
            self.stdout.write("Another ota_rollout is running: nothing to do.")
