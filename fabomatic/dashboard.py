"""The live dashboard on the admin index: every machine's tile in a constant number of queries.

Three queries whatever the size of the lab or of the history: the machines with their boards, their
maintenance plans (prefetched), and the open uses with their members (the partial unique index
``one_open_use_per_machine`` holds exactly those rows). Maintenance comes from the hour meter, so no
query ever reads closed uses. The same tiles are pushed later by ``machines.live`` over the channel layer.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from machines.live import STATES, State, Tile, build_tile
from machines.models import Machine, Use

STATE_LABELS: dict[State, str] = {
    "in_use": _("In use"),
    "blocked": _("Blocked"),
    "maintenance": _("Maintenance"),
    "offline": _("Offline"),
    "free": _("Free"),
}


def dashboard_tiles(now: datetime | None = None) -> list[Tile]:
    """Every machine's tile, ordered by name."""
    now = now or timezone.now()
    open_uses = {
        use.machine_id: use
        for use in Use.objects.filter(ended_at__isnull=True)
        .select_related("member")
        .only("machine_id", "started_at", "member__first_name")
    }
    machines = Machine.objects.select_related("board").prefetch_related("plans").order_by("name")
    return [build_tile(machine, open_uses.get(machine.pk), now) for machine in machines]


def count_states(tiles: list[Tile]) -> dict[State, int]:
    """How many tiles are in each state (every state present, zero included)."""
    counts: dict[State, int] = dict.fromkeys(STATES, 0)
    for tile in tiles:
        counts[tile["state"]] += 1
    return counts


def elapsed_text(since: datetime, now: datetime) -> str:
    """``H:MM:SS`` since a use started: the same format the page's script keeps ticking."""
    seconds = max(0, int((now - since).total_seconds()))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def dashboard_context(now: datetime | None = None) -> dict:
    """What the admin index template needs to draw the dashboard without its script."""
    now = now or timezone.now()
    tiles = dashboard_tiles(now)
    counts = count_states(tiles)
    try:  # reversed once: 100 reverse() calls would cost more than the three queries
        machine_url = reverse("admin:machines_machine_change", args=[0])
    except NoReverseMatch:
        machine_url = ""
    labels = {state: str(label) for state, label in STATE_LABELS.items()}
    rows = []
    for tile in tiles:
        since = datetime.fromisoformat(tile["since"]) if tile["since"] else None
        last_seen = datetime.fromisoformat(tile["last_seen"]) if tile["last_seen"] else None
        rows.append(
            {
                **tile,
                "label": labels[tile["state"]],
                "since_dt": since,
                "last_seen_dt": last_seen,
                "elapsed": elapsed_text(since, now) if since else "",
                "url": machine_url.replace("/0/", f"/{tile['id']}/") if machine_url else "",
            }
        )
    return {
        "tiles": rows,
        "tiles_data": tiles,
        "counters": [{"state": state, "label": labels[state], "count": counts[state]} for state in STATES],
        "machine_count": len(tiles),
        # Uses recorded with an implausible duration, waiting for staff (a count on a partial index).
        "flagged_uses": Use.objects.exclude(flag=Use.Flag.NONE).count(),
        "now": now,
        "online_seconds": settings.ONLINE_SECONDS,
        # Texts the script needs, in the page's language.
        "labels": {
            "states": labels,
            "live": gettext("Live"),
            "connecting": gettext("Connecting…"),
            "reconnecting": gettext("Not live, reconnecting… (state at %(time)s)"),
            "neverSeen": gettext("never seen"),
            "firmware": gettext("Board firmware"),
        },
    }
