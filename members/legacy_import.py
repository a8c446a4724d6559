"""Import a database of the old FabOMatic (Flask/SQLAlchemy) backend.

``import_database(path)`` reads the old SQLite file read-only (``mode=ro``), checks that it really is a FabOMatic
database (any schema from 0.0.x to 1.0.x: columns added by later Alembic revisions are optional) and brings
everything over in one transaction. Nothing is written when the file is rejected or when the import fails half-way.

Mapping rules (also in the README, "Importing from FabOMatic"):

* Old primary keys are kept in the ``legacy_id`` fields, so a second run finds every row again and creates nothing.
  Machines keep their ids (the boards are configured with them); authorizations are unique per member × machine and
  cards per UID.
* Roles and machine types are matched by name first (``manage.py bootstrap`` creates "admins", "Fab Staff",
  "Fab Users", "Anonymous" and "Default type"); a matched row takes the old flags/settings once, when it is linked.
* The old "Anonymous" user is mapped to ``Member.objects.anonymous()``. A user whose e-mail already belongs to a member
  that was not imported (typically the first admin created by ``bootstrap``) is merged into that member.
* Old timestamps are epoch floats; they become aware UTC datetimes.
* Maintenance: the old backend summed the closed uses started after the latest intervention of each plan item; this
  backend counts on the machine's hour meter. ``done_at_hours`` of every imported plan is set so that
  ``hours_since`` equals the old value, and ``Intervention.machine_hours`` is the meter value implied at that time:
  the final meter minus the hours of the closed uses that started after the intervention (never below 0).
"""

from __future__ import annotations

import ipaddress
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.contrib.auth.hashers import make_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import Model, Sum
from django.utils import timezone

from machines.models import LCD_WIDTH, Authorization, Intervention, Machine, MachineType, MaintenancePlan, Use
from members.models import ANONYMOUS_ROLE, CARD_UID_RE, Card, Member, Role, UnknownCard, normalize_uid
from telemetry.models import Board

logger = logging.getLogger(__name__)

BATCH = 2000
DEFAULT_TYPE = "Default type"
DEFAULT_ROLE = "Fab Users"

# Tables and columns every FabOMatic schema has had since the initial Alembic revision (2dc275252e0e).
REQUIRED_COLUMNS: dict[str, set[str]] = {
    "roles": {"role_id", "role_name", "authorize_all", "reserved", "maintenance", "backend_admin"},
    "users": {"user_id", "name", "surname", "role_id", "card_uuid", "disabled", "deleted", "email"},
    "machine_types": {"type_id", "type_name", "type_timeout_min"},
    "machines": {"machine_id", "machine_name", "machine_type_id", "machine_hours", "blocked", "last_seen"},
    "authorizations": {"user_id", "machine_id"},
    "maintenances": {"maintenance_id", "hours_between", "description", "machine_id"},
    "interventions": {"intervention_id", "maintenance_id", "machine_id", "user_id", "timestamp"},
    "uses": {"use_id", "user_id", "machine_id", "start_timestamp", "last_seen", "end_timestamp"},
    "unknown_cards": {"id", "card_uuid", "timestamp", "machine_id"},
}
# Added by 123b2cca325f (0.1.8).
BOARD_COLUMNS = {"board_id", "machine_id", "ip_address", "fw_version", "last_seen"}

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


class LegacyImportError(Exception):
    """The file is not a readable FabOMatic database; nothing was written."""


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
    staff_without_password: list[str] = field(default_factory=list)

    @property
    def created(self) -> int:
        return sum(t.created for t in self.tallies.values())


def import_database(path: str | Path, *, dry_run: bool = False) -> ImportReport:
    """Import the FabOMatic database at ``path``; with ``dry_run`` everything is rolled back at the end.

    Raises ``LegacyImportError`` (and writes nothing) for a file that is not a readable FabOMatic database.
    """
    con = open_legacy(path)
    try:
        columns = check_schema(con)
        report = ImportReport(path=str(path), schema_version=_schema_version(con, columns), dry_run=dry_run)
        try:
            with transaction.atomic():
                _Importer(con, columns, report).run()
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
    return report


def open_legacy(path: str | Path) -> sqlite3.Connection:
    """Open the old database read-only: the file is never modified."""
    p = Path(path)
    if not p.is_file():
        raise LegacyImportError(f"{path}: no such file.")
    try:
        con = sqlite3.connect(f"file:{quote(str(p.resolve()))}?mode=ro", uri=True)
        con.row_factory = sqlite3.Row
        result = con.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as exc:
        raise LegacyImportError(f"{path}: not an SQLite database ({exc}).") from exc
    if [tuple(r) for r in result] != [("ok",)]:
        con.close()
        detail = "; ".join(str(r[0]) for r in result[:3])
        raise LegacyImportError(f"{path}: the SQLite file is corrupt ({detail}).")
    return con


def check_schema(con: sqlite3.Connection) -> dict[str, set[str]]:
    """Columns per table (lower-case); raises LegacyImportError when FabOMatic tables or columns are missing."""
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
        columns = {
            name.lower(): {str(c[1]).lower() for c in con.execute(f'PRAGMA table_info("{name}")')} for name in names
        }
    except sqlite3.Error as exc:
        raise LegacyImportError(f"cannot read the database schema ({exc}).") from exc
    missing_tables = sorted(set(REQUIRED_COLUMNS) - set(columns))
    if missing_tables:
        raise LegacyImportError(
            f"not a FabOMatic database: table(s) {', '.join(missing_tables)} missing; nothing was imported."
        )
    for table, required in REQUIRED_COLUMNS.items():
        if missing := sorted(required - columns[table]):
            raise LegacyImportError(
                f"not a FabOMatic database: table {table} lacks {', '.join(missing)}; nothing was imported."
            )
    if "boards" in columns and not BOARD_COLUMNS <= columns["boards"]:
        del columns["boards"]
    return columns


def _schema_version(con: sqlite3.Connection, columns: dict[str, set[str]]) -> str:
    if "alembic_version" not in columns:
        return "unknown"
    row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(row[0]) if row else "unknown"


def _dt(value: Any) -> datetime | None:
    """An old epoch float (seconds) as an aware UTC datetime; None when absent or not a number."""
    if value is None or value == "":
        return None
    try:
        return datetime.fromtimestamp(float(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


def _text(value: Any, limit: int) -> str:
    return ("" if value is None else str(value)).strip()[:limit]


class _Importer:
    """One import run: the old connection, the id maps built along the way, and the report."""

    def __init__(self, con: sqlite3.Connection, columns: dict[str, set[str]], report: ImportReport) -> None:
        self.con = con
        self.columns = columns
        self.report = report
        self.now = timezone.now()
        self.role_map: dict[int, int] = {}  # old role_id -> Role.pk
        self.member_map: dict[int, int] = {}  # old user_id -> Member.pk
        self.type_map: dict[int, int] = {}  # old type_id -> MachineType.pk
        self.machine_ids: set[int] = set()  # old machine ids present here (same ids)
        self.plan_map: dict[int, int] = {}  # old maintenance_id -> MaintenancePlan.pk
        self.new_plans: list[int] = []  # old maintenance_ids created in this run
        self.new_interventions: list[int] = []  # old intervention_ids created in this run
        self.anonymous_pk: int | None = None

    # --- helpers --------------------------------------------------------------------------------
    def warn(self, message: str) -> None:
        self.report.warnings.append(message)

    def tally(self, name: str) -> Tally:
        return self.report.tallies[name]

    def col(self, table: str, column: str, default: str = "NULL") -> str:
        """The column if this schema has it, else a constant: older schemas lack later columns."""
        return column if column in self.columns[table] else f"{default} AS {column}"

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> Iterator[sqlite3.Row]:
        cursor = self.con.execute(sql, params)
        while chunk := cursor.fetchmany(BATCH):
            yield from chunk

    @staticmethod
    def legacy_map(model: type[Model]) -> dict[int, int]:
        return dict(model._default_manager.filter(legacy_id__isnull=False).values_list("legacy_id", "pk"))

    # --- the run --------------------------------------------------------------------------------
    def run(self) -> None:
        self.roles()
        self.machine_types()
        self.members()
        self.machines()
        self.authorizations()
        self.plans()
        self.interventions()
        self.uses()
        self.unknown_cards()
        self.boards()
        self.maintenance_counters()
        self.rebase_meters()

    def roles(self) -> None:
        t = self.tally("Roles")
        by_legacy = {r.legacy_id: r for r in Role.objects.filter(legacy_id__isnull=False)}
        by_name = {r.name: r for r in Role.objects.all()}
        for row in self.rows(
            "SELECT role_id, role_name, authorize_all, reserved, maintenance, backend_admin FROM roles ORDER BY role_id"
        ):
            t.found += 1
            flags = {k: bool(row[k]) for k in ("authorize_all", "maintenance", "backend_admin")}
            name = _text(row["role_name"], 100) or f"Role {row['role_id']}"
            role = by_legacy.get(row["role_id"]) or by_name.get(name)
            if role is None:
                role = Role.objects.create(name=name, reserved=bool(row["reserved"]), legacy_id=row["role_id"], **flags)
                by_name[name] = role
                t.created += 1
            else:
                t.existing += 1
                if role.legacy_id is None:  # matched by name: link it once and take the old flags
                    changed = [f"{k}={v}" for k, v in flags.items() if getattr(role, k) != v]
                    for k, v in flags.items():
                        setattr(role, k, v)
                    role.reserved = role.reserved or bool(row["reserved"])
                    role.legacy_id = row["role_id"]
                    role.save()
                    if changed:
                        self.warn(f"Role {name!r} takes its flags from the old database: {', '.join(changed)}.")
            self.role_map[row["role_id"]] = role.pk

    def machine_types(self) -> None:
        t = self.tally("Machine types")
        by_legacy = {m.legacy_id: m for m in MachineType.objects.filter(legacy_id__isnull=False)}
        by_name = {m.name: m for m in MachineType.objects.all()}
        sql = (
            f"SELECT type_id, type_name, type_timeout_min, {self.col('machine_types', 'grace_period_min')}, "
            f"{self.col('machine_types', 'access_management')} FROM machine_types ORDER BY type_id"
        )
        for row in self.rows(sql):
            t.found += 1
            name = _text(row["type_name"], 100) or f"Type {row['type_id']}"
            timeout, grace = _int(row["type_timeout_min"]), _int(row["grace_period_min"])
            values = {
                "logoff_minutes": 1440 if timeout is None else min(max(timeout, 0), 65535),
                "grace_minutes": 2 if grace is None else min(max(grace, 0), 65535),
                "requires_authorization": _int(row["access_management"]) != 1,
            }
            mtype = by_legacy.get(row["type_id"]) or by_name.get(name)
            if mtype is None:
                mtype = MachineType.objects.create(name=name, legacy_id=row["type_id"], **values)
                by_name[name] = mtype
                t.created += 1
            else:
                t.existing += 1
                if mtype.legacy_id is None:  # matched by name ("Default type"): take the old settings once
                    for k, v in values.items():
                        setattr(mtype, k, v)
                    mtype.legacy_id = row["type_id"]
                    mtype.save()
            self.type_map[row["type_id"]] = mtype.pk

    def members(self) -> None:
        t = self.tally("Members")
        anonymous_roles = {
            r["role_id"] for r in self.con.execute("SELECT role_id FROM roles WHERE role_name = ?", (ANONYMOUS_ROLE,))
        }
        by_legacy = self.legacy_map(Member)
        self.check_same_database(by_legacy)
        # lower-case e-mail -> (pk or None when created in this run, legacy_id)
        emails: dict[str, tuple[int | None, int | None]] = {
            e.lower(): (pk, legacy)
            for pk, e, legacy in Member.objects.filter(email__isnull=False).values_list("pk", "email", "legacy_id")
        }
        admin_roles = set(Role.objects.filter(backend_admin=True).values_list("pk", flat=True))
        fallback_role: int | None = None
        cards: list[tuple[int, Any]] = []
        new: list[Member] = []
        sql = (
            "SELECT user_id, name, surname, role_id, card_UUID AS card, disabled, deleted, email, "
            f"{self.col('users', 'receive_weekly_summary', '0')} FROM users ORDER BY user_id"
        )
        for row in self.rows(sql):
            t.found += 1
            uid = row["user_id"]
            if uid in by_legacy:
                t.existing += 1
                self.member_map[uid] = by_legacy[uid]
                cards.append((uid, row["card"]))
                continue
            if row["role_id"] in anonymous_roles:  # the old placeholder user: ours, not a copy
                anonymous = Member.objects.anonymous()
                if anonymous.legacy_id is None:
                    Member.objects.filter(pk=anonymous.pk).update(legacy_id=uid)
                self.member_map[uid] = anonymous.pk
                t.existing += 1
                continue
            email = _text(row["email"], 254) or None
            if email:
                try:
                    validate_email(email)
                except ValidationError:
                    self.warn(f"User {uid} ({row['name']} {row['surname']}): invalid e-mail {email!r} dropped.")
                    email = None
            if email:
                email = Member.objects.normalize_email(email)  # as create_user does: the domain in lower case
                hit = emails.get(email.lower())
                if hit and hit[0] is not None and hit[1] is None:
                    # A member created here before the import (e.g. the first admin): the same person.
                    Member.objects.filter(pk=hit[0]).update(legacy_id=uid)
                    emails[email.lower()] = (hit[0], uid)
                    self.member_map[uid] = hit[0]
                    cards.append((uid, row["card"]))
                    t.existing += 1
                    self.warn(f"User {uid} merged into the existing member with e-mail {email}.")
                    continue
                if hit:
                    self.warn(f"User {uid} ({row['name']} {row['surname']}): e-mail {email} is already used; dropped.")
                    email = None
                else:
                    emails[email.lower()] = (None, uid)
            role_pk = self.role_map.get(row["role_id"])
            if role_pk is None:
                if fallback_role is None:
                    fallback_role = Role.objects.get_or_create(name=DEFAULT_ROLE)[0].pk
                role_pk = fallback_role
                self.warn(f"User {uid}: unknown role {row['role_id']}; given the role {DEFAULT_ROLE!r}.")
            weekly = bool(_int(row["receive_weekly_summary"]))
            if weekly and not email:
                weekly = False
                self.warn(f"User {uid}: weekly summary opt-in dropped (no e-mail).")
            staff = role_pk in admin_roles and email is not None
            new.append(
                Member(
                    email=email,
                    first_name=_text(row["name"], 150) or "?",
                    last_name=_text(row["surname"], 150),
                    role_id=role_pk,
                    disabled=bool(row["disabled"]),
                    deleted_at=self.now if row["deleted"] else None,
                    receive_weekly_summary=weekly,
                    # Old portal admins had the whole web UI; there was no finer permission model.
                    is_staff=staff,
                    is_superuser=staff,
                    password=make_password(None),  # Werkzeug hashes are not Django's: unusable, reset by e-mail
                    date_joined=self.now,
                    legacy_id=uid,
                )
            )
            cards.append((uid, row["card"]))
        Member.objects.bulk_create(new, batch_size=BATCH)
        t.created += len(new)
        self.member_map.update({k: v for k, v in self.legacy_map(Member).items() if k not in self.member_map})
        self.report.staff_without_password = list(
            Member.objects.filter(legacy_id__isnull=False, is_staff=True, password__startswith="!")
            .order_by("email")
            .values_list("email", flat=True)
        )
        self.cards(cards)

    def check_same_database(self, by_legacy: dict[int, int]) -> None:
        """Refuse a different old database on top of an earlier import: their ids would collide.

        Names may have been edited here since the first import, so only a majority of differences counts.
        """
        if not by_legacy:
            return
        here = {
            legacy: first.casefold()
            for legacy, first in Member.objects.filter(legacy_id__isnull=False, deleted_at__isnull=True).values_list(
                "legacy_id", "first_name"
            )
        }
        matched = different = 0
        for row in self.con.execute("SELECT user_id, name FROM users"):
            if row["user_id"] in here:
                matched += 1
                different += here[row["user_id"]] != _text(row["name"], 150).casefold()
        if different >= 2 and different * 2 > matched:
            raise LegacyImportError(
                f"{different} of the {matched} members imported before with the same old ids have other names: "
                "this looks like a different FabOMatic database than the one imported before, and its ids would "
                "collide. Import only (newer copies of) the same database; nothing was imported."
            )

    def cards(self, cards: list[tuple[int, Any]]) -> None:
        t = self.tally("Cards")
        owners = dict(Card.objects.values_list("uid", "member_id"))
        new: list[Card] = []
        without = 0
        for user_id, raw in cards:
            if raw is None or str(raw).strip() == "":
                without += 1
                continue
            t.found += 1
            uid = normalize_uid(raw)
            member_pk = self.member_map[user_id]
            if not CARD_UID_RE.match(uid):
                t.skipped += 1
                self.warn(f"User {user_id}: card UID {raw!r} is not 8 or 14 hex characters; skipped.")
            elif uid in owners:
                if owners[uid] == member_pk:
                    t.existing += 1
                else:
                    t.skipped += 1
                    self.warn(f"User {user_id}: card {uid} already belongs to another member; skipped.")
            else:
                owners[uid] = member_pk
                new.append(Card(uid=uid, member_id=member_pk, created_at=self.now))
        Card.objects.bulk_create(new, batch_size=BATCH)
        t.created += len(new)
        if without:
            self.warn(f"Cards: {without} user(s) have no card UID; imported without a card.")

    def machines(self) -> None:
        t = self.tally("Machines")
        present = dict(Machine.objects.values_list("id", "name"))
        names = set(present.values())
        default_type: int | None = None
        new: list[Machine] = []
        for row in self.rows(
            "SELECT machine_id, machine_name, machine_type_id, machine_hours, blocked, last_seen "
            "FROM machines ORDER BY machine_id"
        ):
            t.found += 1
            mid, name = row["machine_id"], _text(row["machine_name"], 100)
            if mid in present:
                t.existing += 1
                self.machine_ids.add(mid)
                if present[mid] != name:
                    self.warn(f"Machine {mid} exists here as {present[mid]!r} (old name {name!r}); kept as it is.")
                continue
            if not isinstance(mid, int) or not 1 <= mid <= 65535:
                t.skipped += 1
                self.warn(f"Machine {mid!r} ({name}): a board id must be 1..65535; skipped with its history.")
                continue
            if name in names or not name:
                renamed = f"{name} (#{mid})"[-100:]
                self.warn(f"Machine {mid}: name {name!r} already taken here; imported as {renamed!r}.")
                name = renamed
            type_pk = self.type_map.get(row["machine_type_id"])
            if type_pk is None:
                if default_type is None:
                    default_type = MachineType.objects.get_or_create(name=DEFAULT_TYPE)[0].pk
                type_pk = default_type
            hours = row["machine_hours"]
            hours = float(hours) if isinstance(hours, int | float) and hours >= 0 else 0.0
            names.add(name)
            self.machine_ids.add(mid)
            new.append(
                Machine(
                    id=mid,
                    name=name,
                    type_id=type_pk,
                    blocked=bool(row["blocked"]),
                    hours=hours,
                    last_seen=_dt(row["last_seen"]),
                )
            )
        Machine.objects.bulk_create(new, batch_size=BATCH)
        t.created += len(new)

    def authorizations(self) -> None:
        t = self.tally("Authorizations")
        present = set(Authorization.objects.values_list("member_id", "machine_id"))
        new: list[Authorization] = []
        orphans = 0
        for row in self.rows("SELECT user_id, machine_id FROM authorizations ORDER BY authorization_id"):
            t.found += 1
            member_pk, mid = self.member_map.get(row["user_id"]), row["machine_id"]
            if member_pk is None or mid not in self.machine_ids:
                orphans += 1
            elif (member_pk, mid) in present:
                t.existing += 1
            else:
                present.add((member_pk, mid))
                new.append(Authorization(member_id=member_pk, machine_id=mid, granted_at=self.now))
        Authorization.objects.bulk_create(new, batch_size=BATCH)
        t.created += len(new)
        self.orphans("Authorizations", orphans)

    def orphans(self, name: str, count: int) -> None:
        if count:
            self.tally(name).skipped += count
            self.warn(
                f"{name}: {count} row(s) point to a user, machine or plan that was not imported, "
                "or lack a valid time; skipped."
            )

    def plans(self) -> None:
        t = self.tally("Maintenance plans")
        by_legacy = self.legacy_map(MaintenancePlan)
        new: list[MaintenancePlan] = []
        orphans = 0
        sql = (
            "SELECT maintenance_id, hours_between, description, machine_id, "
            f"{self.col('maintenances', 'lcd_message')}, {self.col('maintenances', 'instructions_url')} "
            "FROM maintenances ORDER BY maintenance_id"
        )
        for row in self.rows(sql):
            t.found += 1
            old_id = row["maintenance_id"]
            if old_id in by_legacy:
                t.existing += 1
                continue
            if row["machine_id"] not in self.machine_ids:
                orphans += 1
                continue
            url = _text(row["instructions_url"], 10_000)
            if len(url) > 200:
                self.warn(f"Maintenance {old_id}: instructions URL longer than 200 characters dropped.")
                url = ""
            lcd = _text(row["lcd_message"], 10_000)
            if len(lcd) > LCD_WIDTH:
                self.warn(f"Maintenance {old_id}: LCD message {lcd!r} cut to {LCD_WIDTH} characters.")
            new.append(
                MaintenancePlan(
                    machine_id=row["machine_id"],
                    hours_between=float(row["hours_between"] or 0),
                    description=_text(row["description"], 500),
                    lcd_message=lcd[:LCD_WIDTH],
                    instructions_url=url,
                    legacy_id=old_id,
                )
            )
            self.new_plans.append(old_id)
        MaintenancePlan.objects.bulk_create(new, batch_size=BATCH)
        t.created += len(new)
        self.orphans("Maintenance plans", orphans)
        self.plan_map = self.legacy_map(MaintenancePlan)

    def interventions(self) -> None:
        t = self.tally("Interventions")
        present = set(self.legacy_map(Intervention))
        new: list[Intervention] = []
        orphans = 0
        sql = (
            "SELECT intervention_id, maintenance_id, machine_id, user_id, timestamp, "
            f"{self.col('interventions', 'replay')} FROM interventions ORDER BY intervention_id"
        )
        for row in self.rows(sql):
            t.found += 1
            old_id = row["intervention_id"]
            if old_id in present:
                t.existing += 1
                continue
            plan_pk, member_pk = self.plan_map.get(row["maintenance_id"]), self.member_map.get(row["user_id"])
            when = _dt(row["timestamp"])
            if plan_pk is None or member_pk is None or row["machine_id"] not in self.machine_ids or when is None:
                orphans += 1
                continue
            new.append(
                Intervention(
                    plan_id=plan_pk,
                    machine_id=row["machine_id"],
                    member_id=member_pk,
                    performed_at=when,
                    replay=bool(row["replay"]),
                    legacy_id=old_id,
                )
            )
            self.new_interventions.append(old_id)
        Intervention.objects.bulk_create(new, batch_size=BATCH)
        t.created += len(new)
        self.orphans("Interventions", orphans)

    def uses(self) -> None:
        t = self.tally("Uses")
        present = set(Use.objects.filter(legacy_id__isnull=False).values_list("legacy_id", flat=True))
        # One open use per machine (a database constraint here, only a habit there): keep the newest open use,
        # close the others at their last heartbeat. A machine already in use here keeps its own open use.
        busy = set(Use.objects.filter(ended_at__isnull=True).values_list("machine_id", flat=True))
        close_at_last_seen: set[int] = set()
        for row in self.rows(
            "SELECT use_id, machine_id FROM uses WHERE end_timestamp IS NULL "
            "ORDER BY machine_id, start_timestamp DESC, use_id DESC"
        ):
            if row["use_id"] in present:
                continue
            if row["machine_id"] in busy:
                close_at_last_seen.add(row["use_id"])
            busy.add(row["machine_id"])
        if close_at_last_seen:
            self.warn(
                f"Uses: {len(close_at_last_seen)} open use(s) on machines that had a newer open use were closed at "
                f"their last heartbeat (ids {', '.join(map(str, sorted(close_at_last_seen)[:20]))}"
                f"{'…' if len(close_at_last_seen) > 20 else ''})."
            )
        orphans = negative = 0
        batch: list[Use] = []
        sql = (
            "SELECT use_id, user_id, machine_id, start_timestamp, last_seen, end_timestamp, "
            f"{self.col('uses', 'replay')} FROM uses ORDER BY use_id"
        )
        for row in self.rows(sql):
            t.found += 1
            old_id = row["use_id"]
            if old_id in present:
                t.existing += 1
                continue
            member_pk, mid = self.member_map.get(row["user_id"]), row["machine_id"]
            started, last_seen = _dt(row["start_timestamp"]), _dt(row["last_seen"])
            ended = last_seen if old_id in close_at_last_seen else _dt(row["end_timestamp"])
            if member_pk is None or mid not in self.machine_ids or started is None:
                orphans += 1
                continue
            last_seen = last_seen or ended or started
            duration = None
            if ended is not None:
                seconds = round((ended - started).total_seconds())
                if seconds < 0:
                    negative += 1
                duration = max(0, seconds)
            batch.append(
                Use(
                    member_id=member_pk,
                    machine_id=mid,
                    started_at=started,
                    ended_at=ended,
                    last_seen=last_seen,
                    duration=duration,
                    replay=bool(row["replay"]),
                    legacy_id=old_id,
                )
            )
            if len(batch) >= BATCH:
                Use.objects.bulk_create(batch)
                t.created += len(batch)
                batch = []
        Use.objects.bulk_create(batch)
        t.created += len(batch)
        self.orphans("Uses", orphans)
        if negative:
            self.warn(f"Uses: {negative} use(s) ended before they started; imported with duration 0.")

    def unknown_cards(self) -> None:
        """One row per card and machine (the swipes counted), as the bridge keeps them."""
        t = self.tally("Unknown cards")
        present = set(UnknownCard.objects.values_list("uid", "machine_id"))
        groups: dict[tuple[str, int], UnknownCard] = {}
        orphans = invalid = 0
        for row in self.rows("SELECT id, card_UUID AS card, timestamp, machine_id FROM unknown_cards ORDER BY id"):
            t.found += 1
            uid, seen = normalize_uid(row["card"]), _dt(row["timestamp"])
            if row["machine_id"] not in self.machine_ids or seen is None:
                orphans += 1
            elif not uid or len(uid) > 14:
                invalid += 1
            elif (uid, row["machine_id"]) in present:
                t.existing += 1
            elif (group := groups.get((uid, row["machine_id"]))) is not None:
                group.count += 1
                group.first_seen, group.seen_at = min(group.first_seen, seen), max(group.seen_at, seen)
            else:
                groups[uid, row["machine_id"]] = UnknownCard(
                    uid=uid, machine_id=row["machine_id"], seen_at=seen, first_seen=seen, legacy_id=row["id"]
                )
        UnknownCard.objects.bulk_create(groups.values(), batch_size=BATCH)
        t.created += len(groups)
        self.orphans("Unknown cards", orphans)
        if invalid:
            t.skipped += invalid
            self.warn(f"Unknown cards: {invalid} row(s) with an empty or over-long UID skipped.")

    def boards(self) -> None:
        if "boards" not in self.columns:
            return
        t = self.tally("Boards")
        has_board = set(Board.objects.values_list("machine_id", flat=True))
        new: list[Board] = []
        superseded = junk_ip = 0
        seen_machines: set[int] = set()
        sql = (
            "SELECT board_id, machine_id, ip_address, fw_version, last_seen, "
            f"{self.col('boards', 'serial')}, {self.col('boards', 'heap')} "
            "FROM boards ORDER BY machine_id, last_seen DESC, board_id DESC"
        )
        for row in self.rows(sql):
            t.found += 1
            mid = row["machine_id"]
            if mid in seen_machines:  # one board per machine: the latest one wins
                superseded += 1
                continue
            seen_machines.add(mid)
            if mid in has_board:
                t.existing += 1
                continue
            if mid not in self.machine_ids:
                self.orphans("Boards", 1)
                continue
            try:
                ip: str | None = str(ipaddress.ip_address(str(row["ip_address"] or "").strip()))
            except ValueError:
                ip, junk_ip = None, junk_ip + 1
            heap = _int(row["heap"])
            serial = _text(row["serial"], 32)
            new.append(
                Board(
                    machine_id=mid,
                    serial="" if serial == "?" else serial,
                    ip_address=ip,
                    firmware=_text(row["fw_version"], 100),
                    free_heap=heap if heap is not None and heap >= 0 else None,
                    last_seen=_dt(row["last_seen"]) or self.now,
                    legacy_id=row["board_id"],
                )
            )
        Board.objects.bulk_create(new, batch_size=BATCH)
        t.created += len(new)
        t.skipped += superseded
        if superseded:
            self.warn(f"Boards: {superseded} older board row(s) of machines with a newer board not imported.")
        if junk_ip:
            self.warn(f"Boards: {junk_ip} board(s) had no valid IP address; imported without one.")

    # --- maintenance ------------------------------------------------------------------------------
    def maintenance_counters(self) -> None:
        """Set the hour-meter counters of the plans and interventions created in this run (see module doc)."""
        if not self.new_plans and not self.new_interventions:
            return
        # Per machine, the seconds of closed use that started at or after each use start (a suffix sum), indexed,
        # so that "closed use since T" is one index lookup whatever the length of the history.
        self.con.execute("DROP TABLE IF EXISTS temp.fab_closed")
        self.con.execute(
            "CREATE TEMP TABLE fab_closed AS SELECT machine_id, start_timestamp AS s, "
            "SUM(end_timestamp - start_timestamp) OVER (PARTITION BY machine_id ORDER BY start_timestamp DESC) "
            "AS suffix FROM uses WHERE end_timestamp IS NOT NULL"
        )
        self.con.execute("CREATE INDEX temp.fab_closed_ms ON fab_closed (machine_id, s)")
        since = (
            "COALESCE((SELECT suffix FROM fab_closed c WHERE c.machine_id = {m} AND c.s > {t} ORDER BY c.s LIMIT 1), 0)"
        )
        # The old rule (docs/protocol.md §8.9): closed uses started after the latest intervention on this item (or 0).
        latest = (
            "COALESCE((SELECT MAX(i.timestamp) FROM interventions i "
            "WHERE i.maintenance_id = p.maintenance_id AND i.machine_id = p.machine_id), 0)"
        )
        new_plans = set(self.new_plans)
        plan_seconds = {
            r[0]: (r[1], float(r[2] or 0))
            for r in self.con.execute(
                f"SELECT p.maintenance_id, p.machine_id, {since.format(m='p.machine_id', t=latest)} FROM maintenances p"
            )
            if r[0] in new_plans
        }
        hours = dict(Machine.objects.filter(pk__in={m for m, _ in plan_seconds.values()}).values_list("pk", "hours"))
        needed: dict[int, float] = {}
        for mid, seconds in plan_seconds.values():
            needed[mid] = max(needed.get(mid, 0.0), seconds / 3600)
        for mid, need in needed.items():
            if need > hours[mid]:
                if need - hours[mid] > 1 / 3600:
                    self.warn(
                        f"Machine {mid}: hour meter {hours[mid]:.2f} h is below the {need:.2f} h of use counted "
                        "for maintenance; raised to it."
                    )
                Machine.objects.filter(pk=mid).update(hours=need)
                hours[mid] = need
        plans = list(MaintenancePlan.objects.filter(legacy_id__in=list(plan_seconds)))
        for plan in plans:
            mid, seconds = plan_seconds[plan.legacy_id]
            plan.done_at_hours = hours[mid] - seconds / 3600
        MaintenancePlan.objects.bulk_update(plans, ["done_at_hours"], batch_size=BATCH)

        if not self.new_interventions:
            return
        wanted = set(self.new_interventions)
        after = {
            r[0]: (r[1], float(r[2] or 0))
            for r in self.con.execute(
                f"SELECT i.intervention_id, i.machine_id, {since.format(m='i.machine_id', t='i.timestamp')} "
                "FROM interventions i"
            )
            if r[0] in wanted
        }
        hours.update(Machine.objects.filter(pk__in={m for m, _ in after.values()}).values_list("pk", "hours"))
        done = list(Intervention.objects.filter(legacy_id__in=list(after)))
        for item in done:
            mid, seconds = after[item.legacy_id]
            item.machine_hours = max(0.0, hours[mid] - seconds / 3600)
        Intervention.objects.bulk_update(done, ["machine_hours"], batch_size=BATCH)
        self.con.execute("DROP TABLE IF EXISTS temp.fab_closed")

    def rebase_meters(self) -> None:
        """The part of each imported meter that no use backs (the old accumulator), then the counters re-derived
        from the history (machines.services.recount_machine), as every later correction will."""
        from machines.services import recount_machine

        ids = list(Machine.objects.filter(pk__in=self.machine_ids).values_list("pk", flat=True))
        seconds = dict(
            Use.objects.filter(machine_id__in=ids, ended_at__isnull=False)
            .values("machine_id")
            .annotate(s=Sum("duration"))
            .values_list("machine_id", "s")
        )
        for machine in Machine.objects.filter(pk__in=ids).only("pk", "hours"):
            Machine.objects.filter(pk=machine.pk).update(
                hours_offset=machine.hours - (seconds.get(machine.pk) or 0) / 3600
            )
            recount_machine(machine.pk)
