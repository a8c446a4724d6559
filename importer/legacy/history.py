"""History: interventions, uses, unknown cards and boards, attached to the people and machines imported before."""

from __future__ import annotations

import ipaddress

from machines.models import Intervention, Use
from members.models import UnknownCard, normalize_uid
from telemetry.models import Board

from .run import Run
from .source import BATCH, as_datetime, as_int, as_text


def interventions(run: Run) -> None:
    """Interventions on the maintenance plans; their meter values are set at the end (``counters``)."""
    t = run.tally("Interventions")
    present = set(run.legacy_map(Intervention))
    new: list[Intervention] = []
    orphans = 0
    sql = (
        "SELECT intervention_id, maintenance_id, machine_id, user_id, timestamp, "
        f"{run.source.col('interventions', 'replay')} FROM interventions ORDER BY intervention_id"
    )
    for row in run.source.rows(sql):
        t.found += 1
        old_id = row["intervention_id"]
        if old_id in present:
            t.existing += 1
            continue
        plan_pk, member_pk = run.plan_map.get(row["maintenance_id"]), run.member_map.get(row["user_id"])
        when = as_datetime(row["timestamp"])
        if plan_pk is None or member_pk is None or row["machine_id"] not in run.machine_ids or when is None:
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
        run.new_interventions.append(old_id)
    Intervention.objects.bulk_create(new, batch_size=BATCH)
    t.created += len(new)
    run.orphans("Interventions", orphans)


def _open_uses_to_close(run: Run, present: set[int]) -> set[int]:
    """One open use per machine (a database constraint here, only a habit there): the old ids of the open uses to
    close at their last heartbeat, all but the newest of each machine. A machine already in use here keeps its own
    open use."""
    busy = set(Use.objects.filter(ended_at__isnull=True).values_list("machine_id", flat=True))
    close_at_last_seen: set[int] = set()
    for row in run.source.rows(
        "SELECT use_id, machine_id FROM uses WHERE end_timestamp IS NULL "
        "ORDER BY machine_id, start_timestamp DESC, use_id DESC"
    ):
        if row["use_id"] in present:
            continue
        if row["machine_id"] in busy:
            close_at_last_seen.add(row["use_id"])
        busy.add(row["machine_id"])
    if close_at_last_seen:
        run.warn(
            f"Uses: {len(close_at_last_seen)} open use(s) on machines that had a newer open use were closed at "
            f"their last heartbeat (ids {', '.join(map(str, sorted(close_at_last_seen)[:20]))}"
            f"{'…' if len(close_at_last_seen) > 20 else ''})."
        )
    return close_at_last_seen


def uses(run: Run) -> None:
    t = run.tally("Uses")
    present = set(run.legacy_map(Use))
    close_at_last_seen = _open_uses_to_close(run, present)
    orphans = negative = 0
    batch: list[Use] = []
    sql = (
        "SELECT use_id, user_id, machine_id, start_timestamp, last_seen, end_timestamp, "
        f"{run.source.col('uses', 'replay')} FROM uses ORDER BY use_id"
    )
    for row in run.source.rows(sql):
        t.found += 1
        old_id = row["use_id"]
        if old_id in present:
            t.existing += 1
            continue
        member_pk, mid = run.member_map.get(row["user_id"]), row["machine_id"]
        started, last_seen = as_datetime(row["start_timestamp"]), as_datetime(row["last_seen"])
        ended = last_seen if old_id in close_at_last_seen else as_datetime(row["end_timestamp"])
        if member_pk is None or mid not in run.machine_ids or started is None:
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
    run.orphans("Uses", orphans)
    if negative:
        run.warn(f"Uses: {negative} use(s) ended before they started; imported with duration 0.")


def unknown_cards(run: Run) -> None:
    """One row per card and machine (the swipes counted), as the bridge keeps them."""
    t = run.tally("Unknown cards")
    present = set(UnknownCard.objects.values_list("uid", "machine_id"))
    groups: dict[tuple[str, int], UnknownCard] = {}
    orphans = invalid = 0
    for row in run.source.rows("SELECT id, card_UUID AS card, timestamp, machine_id FROM unknown_cards ORDER BY id"):
        t.found += 1
        uid, seen = normalize_uid(row["card"]), as_datetime(row["timestamp"])
        if row["machine_id"] not in run.machine_ids or seen is None:
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
    run.orphans("Unknown cards", orphans)
    if invalid:
        t.skipped += invalid
        run.warn(f"Unknown cards: {invalid} row(s) with an empty or over-long UID skipped.")


def boards(run: Run) -> None:
    """The latest board of each machine (schemas from 0.1.8 on have boards)."""
    if "boards" not in run.source.columns:
        return
    t = run.tally("Boards")
    has_board = set(Board.objects.values_list("machine_id", flat=True))
    new: list[Board] = []
    superseded = junk_ip = 0
    seen_machines: set[int] = set()
    sql = (
        "SELECT board_id, machine_id, ip_address, fw_version, last_seen, "
        f"{run.source.col('boards', 'serial')}, {run.source.col('boards', 'heap')} "
        "FROM boards ORDER BY machine_id, last_seen DESC, board_id DESC"
    )
    for row in run.source.rows(sql):
        t.found += 1
        mid = row["machine_id"]
        if mid in seen_machines:  # one board per machine: the latest one wins
            superseded += 1
            continue
        seen_machines.add(mid)
        if mid in has_board:
            t.existing += 1
            continue
        if mid not in run.machine_ids:
            run.orphans("Boards", 1)
            continue
        try:
            ip: str | None = str(ipaddress.ip_address(str(row["ip_address"] or "").strip()))
        except ValueError:
            ip, junk_ip = None, junk_ip + 1
        heap = as_int(row["heap"])
        serial = as_text(row["serial"], 32)
        new.append(
            Board(
                machine_id=mid,
                serial="" if serial == "?" else serial,
                ip_address=ip,
                firmware=as_text(row["fw_version"], 100),
                free_heap=heap if heap is not None and heap >= 0 else None,
                last_seen=as_datetime(row["last_seen"]) or run.now,
                legacy_id=row["board_id"],
            )
        )
    Board.objects.bulk_create(new, batch_size=BATCH)
    t.created += len(new)
    t.skipped += superseded
    if superseded:
        run.warn(f"Boards: {superseded} older board row(s) of machines with a newer board not imported.")
    if junk_ip:
        run.warn(f"Boards: {junk_ip} board(s) had no valid IP address; imported without one.")
