"""Machines: machine types, machines (with their old ids, which the boards are configured with), authorizations and
maintenance plans."""

from __future__ import annotations

from machines.models import LCD_WIDTH, Authorization, Machine, MachineType, MaintenancePlan

from .run import Run
from .source import BATCH, as_datetime, as_int, as_text

DEFAULT_TYPE = "Default type"


def machine_types(run: Run) -> None:
    t = run.tally("Machine types")
    by_legacy = {m.legacy_id: m for m in MachineType.objects.filter(legacy_id__isnull=False)}
    by_name = {m.name: m for m in MachineType.objects.all()}
    sql = (
        f"SELECT type_id, type_name, type_timeout_min, {run.source.col('machine_types', 'grace_period_min')}, "
        f"{run.source.col('machine_types', 'access_management')} FROM machine_types ORDER BY type_id"
    )
    for row in run.source.rows(sql):
        t.found += 1
        name = as_text(row["type_name"], 100) or f"Type {row['type_id']}"
        timeout, grace = as_int(row["type_timeout_min"]), as_int(row["grace_period_min"])
        values = {
            "logoff_minutes": 1440 if timeout is None else min(max(timeout, 0), 65535),
            "grace_minutes": 2 if grace is None else min(max(grace, 0), 65535),
            "requires_authorization": as_int(row["access_management"]) != 1,
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
        run.type_map[row["type_id"]] = mtype.pk


def machines(run: Run) -> None:
    t = run.tally("Machines")
    present = dict(Machine.objects.values_list("id", "name"))
    names = set(present.values())
    default_type: int | None = None
    new: list[Machine] = []
    for row in run.source.rows(
        "SELECT machine_id, machine_name, machine_type_id, machine_hours, blocked, last_seen "
        "FROM machines ORDER BY machine_id"
    ):
        t.found += 1
        mid, name = row["machine_id"], as_text(row["machine_name"], 100)
        if mid in present:
            t.existing += 1
            run.machine_ids.add(mid)
            if present[mid] != name:
                run.warn(f"Machine {mid} exists here as {present[mid]!r} (old name {name!r}); kept as it is.")
            continue
        if not isinstance(mid, int) or not 1 <= mid <= 65535:
            t.skipped += 1
            run.warn(f"Machine {mid!r} ({name}): a board id must be 1..65535; skipped with its history.")
            continue
        if name in names or not name:
            renamed = f"{name} (#{mid})"[-100:]
            run.warn(f"Machine {mid}: name {name!r} already taken here; imported as {renamed!r}.")
            name = renamed
        type_pk = run.type_map.get(row["machine_type_id"])
        if type_pk is None:
            if default_type is None:
                default_type = MachineType.objects.get_or_create(name=DEFAULT_TYPE)[0].pk
            type_pk = default_type
        hours = row["machine_hours"]
        hours = float(hours) if isinstance(hours, int | float) and hours >= 0 else 0.0
        names.add(name)
        run.machine_ids.add(mid)
        new.append(
            Machine(
                id=mid,
                name=name,
                type_id=type_pk,
                blocked=bool(row["blocked"]),
                hours=hours,
                last_seen=as_datetime(row["last_seen"]),
            )
        )
    Machine.objects.bulk_create(new, batch_size=BATCH)
    t.created += len(new)


def authorizations(run: Run) -> None:
    t = run.tally("Authorizations")
    present = set(Authorization.objects.values_list("member_id", "machine_id"))
    new: list[Authorization] = []
    orphans = 0
    for row in run.source.rows("SELECT user_id, machine_id FROM authorizations ORDER BY authorization_id"):
        t.found += 1
        member_pk, mid = run.member_map.get(row["user_id"]), row["machine_id"]
        if member_pk is None or mid not in run.machine_ids:
            orphans += 1
        elif (member_pk, mid) in present:
            t.existing += 1
        else:
            present.add((member_pk, mid))
            new.append(Authorization(member_id=member_pk, machine_id=mid, granted_at=run.now))
    Authorization.objects.bulk_create(new, batch_size=BATCH)
    t.created += len(new)
    run.orphans("Authorizations", orphans)


def plans(run: Run) -> None:
    """Maintenance plans; their hour-meter counters are set at the end (``counters.maintenance_counters``)."""
    t = run.tally("Maintenance plans")
    by_legacy = run.legacy_map(MaintenancePlan)
    new: list[MaintenancePlan] = []
    orphans = 0
    sql = (
        "SELECT maintenance_id, hours_between, description, machine_id, "
        f"{run.source.col('maintenances', 'lcd_message')}, {run.source.col('maintenances', 'instructions_url')} "
        "FROM maintenances ORDER BY maintenance_id"
    )
    for row in run.source.rows(sql):
        t.found += 1
        old_id = row["maintenance_id"]
        if old_id in by_legacy:
            t.existing += 1
            continue
        if row["machine_id"] not in run.machine_ids:
            orphans += 1
            continue
        url = as_text(row["instructions_url"], 10_000)
        if len(url) > 200:
            run.warn(f"Maintenance {old_id}: instructions URL longer than 200 characters dropped.")
            url = ""
        lcd = as_text(row["lcd_message"], 10_000)
        if len(lcd) > LCD_WIDTH:
            run.warn(f"Maintenance {old_id}: LCD message {lcd!r} cut to {LCD_WIDTH} characters.")
        new.append(
            MaintenancePlan(
                machine_id=row["machine_id"],
                hours_between=float(row["hours_between"] or 0),
                description=as_text(row["description"], 500),
                lcd_message=lcd[:LCD_WIDTH],
                instructions_url=url,
                legacy_id=old_id,
            )
        )
        run.new_plans.append(old_id)
    MaintenancePlan.objects.bulk_create(new, batch_size=BATCH)
    t.created += len(new)
    run.orphans("Maintenance plans", orphans)
    run.plan_map = run.legacy_map(MaintenancePlan)
