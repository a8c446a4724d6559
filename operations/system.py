"""The portal's System page: versions, database, boards, bridge state, recent log lines, backup, board secrets.

Hooked in operations/urls.py (included under ``admin/system/``) through ``admin.site.admin_view`` (staff login
required).
"""

from __future__ import annotations

import json
import logging
import platform
import queue
import shutil
import subprocess
import tempfile
import tomllib
import uuid
from collections import deque
from datetime import timedelta
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import django
import paho.mqtt.client as mqtt
from django.conf import settings
from django.contrib import admin, messages
from django.core.cache import cache as django_cache
from django.core.exceptions import PermissionDenied
from django.db.models import Case, F, Q, When
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from machines.models import Machine
from telemetry import credentials, health
from telemetry.models import Board
from telemetry.mqtt import STATS_TOPIC, build_client

from . import backup, tools

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

logger = logging.getLogger(__name__)

STATS_CACHE_KEY = "fabomatic:system:bridge-stats"
STATS_CACHE_SECONDS = 10
STATS_WAIT_SECONDS = 1.5
STALE_AFTER = timedelta(seconds=15)  # the bridge publishes every 5 s
LOG_LINES = 100
SYSTEM_ROWS = 50  # rows of the boards and credentials tables
# The navigation's entry for this page (the URL name, its label, who sees it), for whoever draws the menu.
NAV_ENTRY = {"url_name": "fabomatic_system", "label": gettext_lazy("System"), "permission": "telemetry.view_board"}


def _may_administer(request: HttpRequest) -> bool:
    user = request.user
    return bool(user.is_superuser or getattr(getattr(user, "role", None), "backend_admin", False))


@cache
def _versions_static() -> dict[StrOrPromise, str]:  # cached: the label is lazy, translated when shown
    try:
        pyproject = tomllib.loads((Path(settings.BASE_DIR) / "pyproject.toml").read_text())
        app = pyproject["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        app = "?"
    try:
        paho = version("paho-mqtt")
    except PackageNotFoundError:
        paho = "?"
    mosquitto = _("not installed here")
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary:
        try:
            out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=2).stdout
            mosquitto = out.splitlines()[0].replace("mosquitto version", "").strip() if out else "?"
        except (OSError, subprocess.TimeoutExpired):
            mosquitto = "?"
    return {
        "Fab-O-Matic": app,
        "Python": platform.python_version(),
        "Django": django.get_version(),
        "paho-mqtt": paho,
        "Mosquitto": mosquitto,
        gettext_lazy("Platform"): f"{platform.system()} {platform.release()} {platform.machine()}",
    }


def bridge_stats() -> list[dict[str, Any]]:
    """The retained ``stats/<client id>`` messages of the bridges, from a short-lived subscription (cached 10 s)."""
    cached = django_cache.get(STATS_CACHE_KEY)
    if cached is not None:
        return cached
    conf = settings.MQTT
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscribed: queue.Queue[bool] = queue.Queue()
    # Credentials and TLS from settings.MQTT; a client id of its own, never the bridge's (it would knock it off).
    client = build_client(client_id=f"fabomatic-system-{uuid.uuid4().hex[:12]}", conf=conf)
    client.connect_timeout = STATS_WAIT_SECONDS

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            c.subscribe(f"{STATS_TOPIC}/#")

    client.on_connect = on_connect
    client.on_subscribe = lambda *a: subscribed.put(True)
    client.on_message = lambda c, u, m: received.put((m.topic, m.payload))
    stats: list[dict[str, Any]] = []
    error = None
    try:
        client.connect(conf["HOST"], conf["PORT"], keepalive=10)
        client.loop_start()
        try:
            subscribed.get(timeout=STATS_WAIT_SECONDS)
            # Retained messages follow the SUBACK at once; a short grace collects them all.
            while True:
                topic, payload = received.get(timeout=0.3)
                try:
                    data = json.loads(payload)
                except ValueError:
                    continue
                if isinstance(data, dict):
                    stats.append({"topic": topic, **data})
        except queue.Empty:
            pass
        finally:
            client.disconnect()
            client.loop_stop()
    except OSError as exc:
        error = str(exc)
    now = timezone.now()
    for item in stats:
        when = parse_datetime(str(item.get("Time", "")))
        item["stale"] = when is None or now - when > STALE_AFTER
        item["time"] = when
        item["host"], item["ip"] = item.get("Backend host", ""), item.get("Backend IP", "")
        latency = item.get("Latency")
        item["latency"] = latency if isinstance(latency, dict) else {}
    if error is not None:
        stats = [{"topic": "", "error": error}]
    django_cache.set(STATS_CACHE_KEY, stats, STATS_CACHE_SECONDS)
    return stats


def log_dir() -> Path:
    return Path(getattr(settings, "LOG_DIR", "") or Path(settings.DATA_DIR) / "log")


def recent_log_lines(limit: int = LOG_LINES) -> list[tuple[str, str]]:
    """The last lines of each process's log file in LOG_DIR (one file per process, see settings.LOGGING)."""
    out = []
    directory = log_dir()
    if not directory.is_dir():
        return []
    for path in sorted(directory.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)[:4]:
        try:
            with path.open(encoding="utf-8", errors="replace") as f:
                lines = deque(f, maxlen=limit)
        except OSError:
            continue
        out.append((path.name, "".join(lines)))
    return out


def system_view(request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm("telemetry.view_board"):
        raise PermissionDenied
    online_after = timezone.now() - timedelta(seconds=settings.ONLINE_SECONDS)
    is_online = Q(last_seen__gte=online_after)
    # At most SYSTEM_ROWS rows per table, those that need a look first: a lab of 1,000 machines made this page
    # 600 KB. The full lists are the Boards and Machines lists (paged, with the same actions).
    boards = list(
        Board.objects.select_related("machine")
        .alias(up=Case(When(is_online, then=1), default=0))
        .order_by("up", F("last_seen").desc(nulls_last=True), "machine_id")[:SYSTEM_ROWS]
    )
    online = {board.pk for board in boards if board.last_seen is not None and board.last_seen >= online_after}
    bridges = bridge_stats()
    health.annotate_latency(boards)  # each board's reply latency, as the live bridges measured it (median, max ms)
    health.annotate(boards)  # environment, version, behind, free-heap trend
    machines = list(
        Machine.objects.select_related("board_credential").order_by(F("board_credential").asc(nulls_first=True), "pk")[
            :SYSTEM_ROWS
        ]
    )
    context = {
        **admin.site.each_context(request),
        "title": _("System"),
        "versions": _versions_static(),
        "database": {
            "vendor": django.db.connection.vendor,
            "name": settings.DATABASES["default"]["NAME"],
            "size": backup.database_size(),
            "backup_available": backup.is_sqlite() or backup.pg_dump_available(),
        },
        "boards": boards,
        "online_boards": online,
        "board_count": Board.objects.count(),
        "behind_count": health.behind_count(),
        "online_count": Board.objects.filter(is_online).count(),
        "machines": machines,
        "machine_count": Machine.objects.count(),
        "bridges": bridges,
        "broker": f"{settings.MQTT['HOST']}:{settings.MQTT['PORT']}",
        "logs": recent_log_lines(),
        "may_administer": _may_administer(request),
        "resources": tools.resources(),
        "settings_shown": tools.effective_settings() if _may_administer(request) else [],
        "now": timezone.now(),
    }
    return TemplateResponse(request, "admin/system.html", context)


def backup_view(request: HttpRequest) -> HttpResponseBase:
    """Download a consistent copy of the database (administrators only: it holds everyone's data)."""
    if not _may_administer(request):
        raise PermissionDenied
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
    if backup.is_sqlite():
        tmp = tempfile.NamedTemporaryFile(prefix="fabomatic-backup-", suffix=".sqlite3", delete=False)
        tmp.close()
        path = Path(tmp.name)
        try:
            backup.sqlite_backup(path)
            handle = path.open("rb")
        finally:
            path.unlink(missing_ok=True)  # the open handle keeps the data until the response is sent
        logger.info("Database backup downloaded by member #%s", request.user.pk)
        return FileResponse(handle, as_attachment=True, filename=f"fabomatic-{stamp}.sqlite3")
    if backup.pg_dump_available():
        response = StreamingHttpResponse(backup.pg_dump_stream(), content_type="application/octet-stream")
        response["Content-Disposition"] = f'attachment; filename="fabomatic-{stamp}.pgdump"'
        return response
    messages.error(request, _("pg_dump is not installed on the server: install postgresql-client."))
    return redirect("fabomatic_system")


@require_POST
def credentials_view(request: HttpRequest, machine_id: int) -> HttpResponse:
    """Issue a new MQTT secret for one machine's board and show it once."""
    if not _may_administer(request):
        raise PermissionDenied
    return credentials.credentials_page(request, admin.site, [get_object_or_404(Machine, pk=machine_id)])
