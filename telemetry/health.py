"""Firmware drift and board health, for the boards list, the dashboard and the System page.

Per board: the environment and version parsed from its ``alive`` (telemetry/firmware.py), "behind" when the lab has
uploaded a newer image for that environment, and the free-heap trend (the hourly minima of the last 48 hours the
bridge keeps in HeapSample). Reading only: nothing here writes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import timedelta

from django.core.cache import cache
from django.utils import timezone

from .fastpath import HEAP_HOURS
from .firmware import FirmwareVersion, parse_reported, version_key
from .models import Board, FirmwareImage, HeapSample

BEHIND_CACHE_KEY = "fabomatic:firmware:behind"
BEHIND_CACHE_SECONDS = 30
BARS = "▁▂▃▄▅▆▇█"


def newest_images() -> dict[str, FirmwareVersion]:
    """The newest uploaded version per environment (images whose version does not parse are never "newest")."""
    newest: dict[str, FirmwareVersion] = {}
    for environment, version in FirmwareImage.objects.values_list("environment", "version"):
        candidate = FirmwareVersion(environment, version, version_key(version))
        if candidate.key is not None and (environment not in newest or candidate.newer_than(newest[environment])):
            newest[environment] = candidate
    return newest


def behind(firmware: str, newest: dict[str, FirmwareVersion]) -> str:
    """The newer version the lab has for this board's environment, or "" when it is up to date (or unknown)."""
    reported = parse_reported(firmware)
    target = newest.get(reported.environment) if reported.environment else None
    if target is None or not target.newer_than(reported):
        return ""
    return target.version


def heap_minima(machine_ids: Iterable[int]) -> dict[int, list[int]]:
    """Each board's hourly free-heap minima of the last HEAP_HOURS hours, oldest first."""
    since = timezone.now() - timedelta(hours=HEAP_HOURS)
    minima: dict[int, list[int]] = defaultdict(list)
    rows = HeapSample.objects.filter(machine_id__in=list(machine_ids), hour__gte=since).order_by("machine_id", "hour")
    for machine_id, minimum in rows.values_list("machine_id", "minimum"):
        minima[machine_id].append(minimum)
    return minima


def sparkline(values: list[int]) -> str:
    """A compact trend in block characters, scaled between the lowest and the highest value."""
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1
    return "".join(BARS[(v - low) * (len(BARS) - 1) // span] for v in values)


def annotate(boards: Sequence[Board], *, heap: bool = True) -> None:
    """Set on each board: ``environment``, ``version``, ``behind`` (the newer version, or ""), ``heap_trend`` (the
    sparkline), ``heap_low`` (the lowest hourly minimum, or None)."""
    newest = newest_images()
    minima = heap_minima(b.machine_id for b in boards) if heap else {}
    for board in boards:
        reported = parse_reported(board.firmware)
        values = minima.get(board.machine_id, [])
        board.environment = reported.environment  # type: ignore[attr-defined]
        board.version = reported.version  # type: ignore[attr-defined]
        board.behind = behind(board.firmware, newest)  # type: ignore[attr-defined]
        board.heap_trend = sparkline(values)  # type: ignore[attr-defined]
        board.heap_low = min(values) if values else None  # type: ignore[attr-defined]


def annotate_latency(boards: Sequence[Board]) -> None:
    """Set ``latency`` on each board: (median ms, max ms, replies) as the running bridges last published it, or None
    (from their retained stats, read by the System page's cached subscription)."""
    from operations.system import bridge_stats  # the System page owns the stats subscription

    live = [b for b in bridge_stats() if b.get("Connected") and not b.get("stale")]
    for board in boards:
        figures = [b["latency"][key] for b in live if (key := str(board.machine_id)) in b.get("latency", {})]
        board.latency = figures[0] if figures else None  # type: ignore[attr-defined]


def behind_count() -> int:
    """How many boards run older firmware than the newest image of their environment (cached 30 s)."""
    cached = cache.get(BEHIND_CACHE_KEY)
    if cached is not None:
        return int(cached)
    newest = newest_images()
    count = 0
    if newest:
        count = sum(1 for firmware in Board.objects.values_list("firmware", flat=True) if behind(firmware, newest))
    cache.set(BEHIND_CACHE_KEY, count, BEHIND_CACHE_SECONDS)
    return count
