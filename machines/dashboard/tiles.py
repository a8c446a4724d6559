"""Every machine's tile in a constant number of queries, whatever the size of the lab or of the history.

Five queries: the machines with their boards, all their maintenance plans, the open uses with their members (the
partial unique index ``one_open_use_per_machine`` holds exactly those rows), and the machines locked by an open
"out of order" fault report or a pending check after use (partial indexes ``fault_open`` and ``check_open``).
Maintenance comes from the hour meter, so no query ever reads closed uses. The page draws these tiles;
:mod:`.events` pushes the same tiles when they change.
"""

from __future__ import annotations

import html
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any, Literal, TypedDict

from django.conf import settings
from django.contrib.humanize.templatetags.humanize import naturaltime
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext, npgettext
from django.utils.translation import gettext_lazy as _

from machines import services
from machines.models import FaultReport, Machine, MachineCheck, MaintenancePlan, Use

State = Literal["in_use", "blocked", "out_of_order", "to_check", "maintenance", "offline", "free"]
STATES: tuple[State, ...] = ("in_use", "blocked", "out_of_order", "to_check", "maintenance", "offline", "free")
STATE_LABELS: dict[State, Any] = {
    "in_use": _("In use"),
    "blocked": _("Blocked"),
    "out_of_order": _("Out of order"),
    "to_check": _("To check"),
    "maintenance": _("Maintenance"),
    "offline": _("Offline"),
    "free": _("Free"),
}


def counter_labels() -> dict[str, list[str]]:
    """Each counter's label for one machine and for several (Italian: "1 libera", "4 libere")."""
    return {
        "in_use": [npgettext("machines counter", "In use", "In use", n) for n in (1, 2)],
        "blocked": [npgettext("machines counter", "Blocked", "Blocked", n) for n in (1, 2)],
        "out_of_order": [npgettext("machines counter", "Out of order", "Out of order", n) for n in (1, 2)],
        "to_check": [npgettext("machines counter", "To check", "To check", n) for n in (1, 2)],
        "maintenance": [npgettext("machines counter", "Maintenance", "Maintenance", n) for n in (1, 2)],
        "offline": [npgettext("machines counter", "Offline", "Offline", n) for n in (1, 2)],
        "free": [npgettext("machines counter", "Free", "Free", n) for n in (1, 2)],
    }


class Tile(TypedDict):
    id: int
    name: str
    state: State
    user: str | None  # first name of the member using it
    since: str | None  # ISO start of the open use
    maintenance: str  # the first due item
    last_seen: str | None
    firmware: str | None
    ip: str | None  # the board's address, as the old dashboard showed it
    online_seconds: int


def tile_state(
    *,
    in_use: bool,
    blocked: bool,
    maintenance: bool,
    online: bool,
    out_of_order: bool = False,
    to_check: bool = False,
) -> State:
    """One state per machine: in use, blocked, out of order (an open fault report locks it), to check (a check
    after use is pending), maintenance, offline, free. A machine in use stays "in use" whatever was reported
    meanwhile: the lock applies at its next login."""
    if in_use:
        return "in_use"
    if blocked:
        return "blocked"
    if out_of_order:
        return "out_of_order"
    if to_check:
        return "to_check"
    if maintenance:
        return "maintenance"
    if not online:
        return "offline"
    return "free"


def build_tile(
    machine: Machine,
    open_use: Use | None,
    now: datetime | None = None,
    plans: list[MaintenancePlan] | None = None,
    lock: str | None = None,
) -> Tile:
    """The tile of a machine, its ``board`` selected and its ``plans`` (in plan order) given or read here; ``lock``:
    "out_of_order", "to_check" or None (:func:`locks`)."""
    due, message = services.maintenance_status(machine, plans)
    board = getattr(machine, "board", None)  # reverse one-to-one: None when no board announced itself
    return Tile(
        id=machine.pk,
        name=machine.name,
        state=tile_state(
            in_use=open_use is not None,
            blocked=machine.blocked,
            maintenance=due,
            online=machine.is_online(now),
            out_of_order=lock == "out_of_order",
            to_check=lock == "to_check",
        ),
        user=open_use.member.first_name if open_use else None,
        since=open_use.started_at.isoformat() if open_use else None,
        maintenance=message,
        last_seen=machine.last_seen.isoformat() if machine.last_seen else None,
        firmware=(board.firmware or None) if board else None,
        ip=board.ip_address if board else None,
        online_seconds=settings.ONLINE_SECONDS,
    )


def tiles(machine_ids: Collection[int] | None = None, now: datetime | None = None) -> list[Tile]:
    """The tiles of these machines (all when None), ordered by name: the one tiles query of the project."""
    now = now or timezone.now()
    # No ORDER BY (Use's default is -started_at): with one, SQLite walks the whole started_at index of the history
    # instead of the partial index of open uses (one_open_use_per_machine) that holds exactly these rows.
    uses = Use.objects.filter(ended_at__isnull=True).order_by()
    machines = Machine.objects.select_related("board").order_by("name")
    # The plans in one query, grouped here: prefetch_related gave each of a lab's 1,000 machines a queryset of its own
    # (6 MB per dashboard), and the memory a page used stays with the portal's process (fabomatic/memory.py).
    plans = MaintenancePlan.objects.order_by("machine_id", "pk")
    if machine_ids is not None:
        uses, machines = uses.filter(machine_id__in=machine_ids), machines.filter(pk__in=machine_ids)
        plans = plans.filter(machine_id__in=machine_ids)
    open_uses = {
        use.machine_id: use
        for use in uses.select_related("member").only("machine_id", "started_at", "member__first_name")
    }
    plans_of: dict[int, list[MaintenancePlan]] = {}
    for plan in plans:
        plans_of.setdefault(plan.machine_id, []).append(plan)
    locked = locks(machine_ids)
    return [
        build_tile(machine, open_uses.get(machine.pk), now, plans_of.get(machine.pk, []), locked.get(machine.pk))
        for machine in machines
    ]


def locks(machine_ids: Collection[int] | None = None) -> dict[int, str]:
    """Machine id → "out_of_order" or "to_check" for the machines locked by an open fault report or a pending check
    (the fault first, as in ``safety.lock_reason``). Two queries on partial indexes: only open rows are read."""
    faults = FaultReport.objects.filter(closed_at__isnull=True, severity=FaultReport.Severity.OUT_OF_ORDER)
    checks = MachineCheck.objects.filter(checked_at__isnull=True)
    if machine_ids is not None:
        faults, checks = faults.filter(machine_id__in=machine_ids), checks.filter(machine_id__in=machine_ids)
    found = dict.fromkeys(checks.order_by().values_list("machine_id", flat=True).distinct(), "to_check")
    found.update(dict.fromkeys(faults.order_by().values_list("machine_id", flat=True).distinct(), "out_of_order"))
    return found


def machine_tile(machine_id: int) -> Tile | None:
    """One machine's tile (three indexed queries)."""
    found = tiles([machine_id])
    return found[0] if found else None


def count_states(all_tiles: list[Tile]) -> dict[State, int]:
    """How many tiles are in each state (every state present, zero included)."""
    counts: dict[State, int] = dict.fromkeys(STATES, 0)
    for tile in all_tiles:
        counts[tile["state"]] += 1
    return counts


def elapsed_text(since: datetime, now: datetime) -> str:
    """``H:MM:SS`` since a use started: the same format the page's script keeps ticking."""
    seconds = max(0, int((now - since).total_seconds()))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def page_context(now: datetime | None = None) -> dict[str, Any]:
    """What the admin index template needs to draw the dashboard without its script."""
    now = now or timezone.now()
    all_tiles = tiles(now=now)
    counts = count_states(all_tiles)
    try:  # reversed once: 100 reverse() calls would cost more than the three queries
        machine_url = reverse("admin:machines_machine_change", args=[0])
    except NoReverseMatch:
        machine_url = ""
    labels = {state: str(label) for state, label in STATE_LABELS.items()}
    counters = counter_labels()
    rows = []
    seen_texts: dict[int, str] = {}  # "3 minutes ago" depends on the delta only: a lab's boards share a few deltas
    for tile in all_tiles:
        since = datetime.fromisoformat(tile["since"]) if tile["since"] else None
        last_seen = datetime.fromisoformat(tile["last_seen"]) if tile["last_seen"] else None
        seen = ""
        if last_seen is not None:
            seconds = int((now - last_seen).total_seconds())
            key = seconds if abs(seconds) < 3600 else seconds // 60 * 60  # below an hour the text shows seconds
            if key not in seen_texts:
                seen_texts[key] = str(naturaltime(now - timedelta(seconds=key)))
            seen = seen_texts[key]
        rows.append(
            {
                **tile,
                "label": labels[tile["state"]],
                "since_dt": since,
                "last_seen_dt": last_seen,
                "seen": seen,
                "elapsed": elapsed_text(since, now) if since else "",
                "url": machine_url.replace("/0/", f"/{tile['id']}/") if machine_url else "",
            }
        )
    texts = tile_texts()
    for row in rows:
        row["html"] = tile_html(row, texts, linked=bool(machine_url))
    return {
        "tiles": rows,
        "tiles_data": all_tiles,
        "counters": [
            {"state": state, "label": counters[state][counts[state] != 1], "count": counts[state]} for state in STATES
        ],
        "machine_count": len(all_tiles),
        # Uses recorded with an implausible duration, waiting for staff (a count on a partial index).
        "flagged_uses": Use.objects.exclude(flag=Use.Flag.NONE).count(),
        "now": now,
        "online_seconds": settings.ONLINE_SECONDS,
        # Texts the script needs, in the page's language.
        "labels": {
            "states": labels,
            "counters": counters,
            "live": gettext("Live"),
            "connecting": gettext("Connecting…"),
            "reconnecting": gettext("Not live, reconnecting… (state at %(time)s)"),
            "neverSeen": gettext("never seen"),
            "firmware": gettext("Board firmware"),
        },
    }


def tile_texts() -> dict[str, str]:
    """The tooltips and fallbacks of a tile in the page's language, escaped: looked up once per page, not per tile."""
    texts = {
        "in_use": gettext("Time in use"),
        "due": gettext("Maintenance due"),
        "firmware": gettext("Board firmware"),
        "seen": gettext("Last seen"),
        "never": gettext("never seen"),
        "ip": gettext("IP address"),
    }
    return {key: html.escape(text) for key, text in texts.items()}


TILE_HTML = (
    '<article class="fab-tile" data-id="{id}" data-state="{state}">'
    '<div class="fab-tile-top">{name}<span class="fab-tile-state">{label}</span></div>'
    '<p class="fab-tile-detail"><span class="fab-tile-user">{user}</span>'
    '<time class="fab-tile-elapsed" datetime="{since}" title="{t[in_use]}">{elapsed}</time>'
    '<span class="fab-tile-maint" title="{t[due]}">{maintenance}</span></p>'
    '<p class="fab-tile-board"><span class="fab-tile-ip" title="{t[ip]}">{ip}</span>'
    '<time class="fab-tile-seen" datetime="{last_seen}" title="{t[seen]}">{seen}</time>'
    '<span class="fab-tile-fw" title="{t[firmware]}">{firmware}</span></p></article>'
)


def tile_html(row: dict[str, Any], texts: dict[str, str], *, linked: bool) -> SafeString:
    """One tile of the page: the same markup the script fills in (admin/index.html's template element).

    Drawn here rather than by the template engine, whose ~20 nodes a tile made a dashboard of 1,000 machines take
    100 ms to render; every value is escaped with the standard library's ``html.escape`` (what Django's ``escape``
    calls, without its lazy-string wrapper, which cost a third of the page at 1,000 tiles). ``texts``: from
    :func:`tile_texts`, already escaped.
    """

    def e(value: object) -> str:
        return "" if value is None else html.escape(str(value))

    name = e(row["name"])
    if linked:
        name = f'<a class="fab-tile-name" href="{e(row["url"])}">{name}</a>'
    else:
        name = f'<span class="fab-tile-name">{name}</span>'
    # Every value above is escaped.
    return mark_safe(
        TILE_HTML.format(
            id=e(row["id"]),
            state=e(row["state"]),
            name=name,
            label=e(row["label"]),
            user=e(row["user"]),
            since=e(row["since"]),
            elapsed=e(row["elapsed"]),
            maintenance=e(row["maintenance"]),
            ip=e(row["ip"]),
            last_seen=e(row["last_seen"]),
            seen=e(row["seen"]) or texts["never"],
            firmware=e(row["firmware"]) or "—",
            t=texts,
        )
    )
