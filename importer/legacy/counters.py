"""Counters: the hour-meter counters of the imported maintenance plans and interventions, then each machine's meter
rebased on the imported history (see the package's doc: the old backend summed uses, this one reads a meter)."""

from __future__ import annotations

import sqlite3

from django.db.models import Sum

from machines.models import Intervention, Machine, MaintenancePlan, Use
from machines.services import recount_machine

from .run import Run
from .source import BATCH

# Seconds of closed use on machine {m} that started after {t}: one lookup in temp.fab_closed.
SINCE = "COALESCE((SELECT suffix FROM fab_closed c WHERE c.machine_id = {m} AND c.s > {t} ORDER BY c.s LIMIT 1), 0)"
# The old rule (docs/protocol.md §8.9): closed uses started after the latest intervention on this item (or 0).
LATEST = (
    "COALESCE((SELECT MAX(i.timestamp) FROM interventions i "
    "WHERE i.maintenance_id = p.maintenance_id AND i.machine_id = p.machine_id), 0)"
)


def maintenance_counters(run: Run) -> None:
    """Set the hour-meter counters of the plans and interventions created in this run."""
    if not run.new_plans and not run.new_interventions:
        return
    _index_closed_uses(run.source.con)
    hours = _plan_counters(run)
    if not run.new_interventions:
        return
    _intervention_counters(run, hours)
    run.source.con.execute("DROP TABLE IF EXISTS temp.fab_closed")


def _index_closed_uses(con: sqlite3.Connection) -> None:
    """Per machine, the seconds of closed use that started at or after each use start (a suffix sum), indexed,
    so that "closed use since T" is one index lookup whatever the length of the history."""
    con.execute("DROP TABLE IF EXISTS temp.fab_closed")
    con.execute(
        "CREATE TEMP TABLE fab_closed AS SELECT machine_id, start_timestamp AS s, "
        "SUM(end_timestamp - start_timestamp) OVER (PARTITION BY machine_id ORDER BY start_timestamp DESC) "
        "AS suffix FROM uses WHERE end_timestamp IS NOT NULL"
    )
    con.execute("CREATE INDEX temp.fab_closed_ms ON fab_closed (machine_id, s)")


def _plan_counters(run: Run) -> dict[int, float]:
    """``done_at_hours`` of the new plans, so that ``hours_since`` equals the old count; a meter below that count is
    raised to it. Returns the meters (machine pk -> hours) read on the way."""
    new_plans = set(run.new_plans)
    plan_seconds = {
        r[0]: (r[1], float(r[2] or 0))
        for r in run.source.con.execute(
            f"SELECT p.maintenance_id, p.machine_id, {SINCE.format(m='p.machine_id', t=LATEST)} FROM maintenances p"
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
                run.warn(
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
    return hours


def _intervention_counters(run: Run, hours: dict[int, float]) -> None:
    """``machine_hours`` of the new interventions: the final meter minus the hours of the closed uses that started
    after the intervention (never below 0)."""
    wanted = set(run.new_interventions)
    after = {
        r[0]: (r[1], float(r[2] or 0))
        for r in run.source.con.execute(
            f"SELECT i.intervention_id, i.machine_id, {SINCE.format(m='i.machine_id', t='i.timestamp')} "
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


def rebase_meters(run: Run) -> None:
    """The part of each imported meter that no use backs (the old accumulator), then the counters re-derived
    from the history (machines.services.recount_machine), as every later correction will."""
    ids = list(Machine.objects.filter(pk__in=run.machine_ids).values_list("pk", flat=True))
    seconds = dict(
        Use.objects.filter(machine_id__in=ids, ended_at__isnull=False)
        .values("machine_id")
        .annotate(s=Sum("duration"))
        .values_list("machine_id", "s")
    )
    for machine in Machine.objects.filter(pk__in=ids).only("pk", "hours"):
        Machine.objects.filter(pk=machine.pk).update(hours_offset=machine.hours - (seconds.get(machine.pk) or 0) / 3600)
        recount_machine(machine.pk)
