"""One import run: the report it returns, and the state its steps share (the old-id → pk maps built on the way)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Model
from django.utils import timezone

from .source import Source

# The report's rows, in the order the command prints them.
MODELS = [
    "Roles",
    "Members",
    "Cards",
    "Machine types",
    "Machines",
    "Authorizations",
    "Maintenance plans",
    "Interventions",
    "Uses",
    "Unknown cards",
    "Boards",
]


@dataclass
class Tally:
    found: int = 0  # rows in the old database
    created: int = 0
    existing: int = 0  # already present (an earlier import, or matched by name / e-mail / UID)
    skipped: int = 0  # not imported; the warnings say why


@dataclass
class ImportReport:
    path: str
    schema_version: str
    dry_run: bool
    tallies: dict[str, Tally] = field(default_factory=lambda: {name: Tally() for name in MODELS})
    warnings: list[str] = field(default_factory=list)
    # Imported portal users (old role with backend_admin): they have no usable password yet.
    staff_without_password: list[str | None] = field(default_factory=list)  # e-mails (nullable column)

    @property
    def created(self) -> int:
        return sum(t.created for t in self.tallies.values())


@dataclass(eq=False)
class Run:
    """The old database, the report, and what each step leaves for the next ones."""

    source: Source
    report: ImportReport
    now: datetime = field(default_factory=timezone.now)
    role_map: dict[int, int] = field(default_factory=dict)  # old role_id -> Role.pk
    member_map: dict[int, int] = field(default_factory=dict)  # old user_id -> Member.pk
    type_map: dict[int, int] = field(default_factory=dict)  # old type_id -> MachineType.pk
    machine_ids: set[int] = field(default_factory=set)  # old machine ids present here (same ids)
    plan_map: dict[int, int] = field(default_factory=dict)  # old maintenance_id -> MaintenancePlan.pk
    new_plans: list[int] = field(default_factory=list)  # old maintenance_ids created in this run
    new_interventions: list[int] = field(default_factory=list)  # old intervention_ids created in this run

    def warn(self, message: str) -> None:
        self.report.warnings.append(message)

    def tally(self, name: str) -> Tally:
        return self.report.tallies[name]

    def orphans(self, name: str, count: int) -> None:
        if count:
            self.tally(name).skipped += count
            self.warn(
                f"{name}: {count} row(s) point to a user, machine or plan that was not imported, "
                "or lack a valid time; skipped."
            )

    @staticmethod
    def legacy_map(model: type[Model]) -> dict[int, int]:
        """legacy_id -> pk of the rows of ``model`` imported before (or earlier in this run)."""
        return dict(model._default_manager.filter(legacy_id__isnull=False).values_list("legacy_id", "pk"))
