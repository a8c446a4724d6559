"""The System page's tools for staff without a shell: restore a backup, download the logs, the host's free disk and
memory, and the effective settings with secrets masked. Views hooked in operations/urls.py; the restore itself is
operations/restore.py.

Not offered: updating the application and rebooting the host (the old FabOMatic page had both). The shipped systemd
units run the portal as an unprivileged user with a read-only code tree (deploy/systemd/), so neither is safe or
even possible from the portal; the README's *Running in production* says how to do both from a shell.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from . import restore

logger = logging.getLogger(__name__)

SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|KEY|CREDENTIAL|PRIVATE", re.IGNORECASE)
URL_PASSWORD = re.compile(r"(//[^:/@]+:)([^@]+)(@)")
SHOWN_SETTINGS = [
    "DEBUG",
    "ALLOWED_HOSTS",
    "PUBLIC_URL",
    "LANGUAGE_CODE",
    "TIME_ZONE",
    "DATA_DIR",
    "LOG_DIR",
    "DATABASES",
    "MQTT",
    "REDIS_URL",
    "EMAIL_URL",
    "EMAIL_HOST",
    "DEFAULT_FROM_EMAIL",
    "ONLINE_SECONDS",
    "OTA_PORT",
    "OTA_BIND",
    "OTA_HOST_PORT",
    "OTA_CONFIRM_SECONDS",
    "WEBHOOK_ALLOW_HTTP",
    "WEBHOOK_TIMEOUT",
    "WEBHOOK_RETRY_HOURS",
    "WEBHOOK_LOG_DAYS",
    "HA_DISCOVERY",
    "HA_DISCOVERY_PREFIX",
    "SPACEAPI_ENABLED",
    "SPACEAPI_OPEN_RULE",
    "RETENTION_DAYS",
    "UNKNOWN_CARD_RETENTION_DAYS",
    "BACKUP_KEEP",
    "SQLITE_CACHE_KB",
    "MEMORY_TRIM_SECONDS",
    "SECRET_KEY",
]


def _may_administer(request: HttpRequest) -> bool:
    from .system import _may_administer as may

    return may(request)


def mask(name: str, value: Any) -> Any:
    """A setting's value for display: secrets replaced by ``********``, passwords in URLs too, recursively."""
    if isinstance(value, dict):
        return {k: mask(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(name, v) for v in value]
    if SECRET_NAME.search(name) and value not in (None, "", False):
        return "********"
    if isinstance(value, str):
        return URL_PASSWORD.sub(r"\1********\3", value)
    return value


def effective_settings() -> list[tuple[str, str]]:
    """The settings staff ask about, as the running portal sees them, secrets masked."""
    out = []
    for name in SHOWN_SETTINGS:
        if hasattr(settings, name):
            out.append((name, repr(mask(name, getattr(settings, name)))))
    return out


def resources() -> dict[str, Any]:
    """Free disk (of the data directory) and memory (of the host, /proc/meminfo) in bytes; None if unknown."""
    disk = shutil.disk_usage(settings.DATA_DIR)
    memory: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _sep, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree"):
                memory[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return {
        "disk_total": disk.total,
        "disk_free": disk.free,
        "memory_total": memory.get("MemTotal"),
        "memory_available": memory.get("MemAvailable"),
        "swap_total": memory.get("SwapTotal"),
        "swap_free": memory.get("SwapFree"),
        "load": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def logs_view(request: HttpRequest) -> HttpResponseBase:
    """Every log file of LOG_DIR (rotated ones included) in one zip (administrators: logs name members)."""
    if not _may_administer(request):
        raise PermissionDenied
    from .system import log_dir

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        directory = log_dir()
        for path in sorted(directory.glob("*.log*")) if directory.is_dir() else []:
            if path.is_file():
                archive.write(path, arcname=path.name)
    buffer.seek(0)
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
    logger.info("Logs downloaded by member #%s", request.user.pk)
    return FileResponse(buffer, as_attachment=True, filename=f"fabomatic-logs-{stamp}.zip")


class RestoreForm(forms.Form):
    backup = forms.FileField(label=gettext_lazy("Backup file"))


def restore_view(request: HttpRequest) -> HttpResponse:
    """Upload → checked and shown for confirmation → on confirmation, current database backed up, then replaced."""
    if not _may_administer(request):
        raise PermissionDenied
    context: dict[str, Any] = {**admin.site.each_context(request), "title": _("Restore the database")}
    if request.method == "POST" and "token" in request.POST:
        return _confirmed(request, str(request.POST["token"]))
    form = RestoreForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        token = uuid.uuid4().hex
        upload = form.cleaned_data["backup"]
        try:
            path = restore.save_upload(upload.chunks(), token)
            checked = restore.inspect(path)
        except restore.Refused as exc:
            _discard(token)
            logger.warning("Restore refused for member #%s (%s): %s", request.user.pk, upload.name, exc)
            form.add_error("backup", str(exc))
        else:
            path.rename(restore.pending_dir() / f"{token}.{checked.kind}")
            context.update(token=token, filename=upload.name, counts=checked.counts, kind=checked.kind)
            return TemplateResponse(request, "admin/system_restore_confirm.html", context)
    context["form"] = form
    return TemplateResponse(request, "admin/system_restore.html", context)


def _discard(token: str) -> None:
    for path in restore.pending_dir().glob(f"{token}.*"):
        path.unlink(missing_ok=True)


def _confirmed(request: HttpRequest, token: str) -> HttpResponse:
    if not re.fullmatch(r"[0-9a-f]{32}", token):
        raise PermissionDenied
    found = [p for p in restore.pending_dir().glob(f"{token}.*") if p.suffix in (".sqlite", ".pgdump")]
    if not found:
        messages.error(request, _("That upload is gone: upload the backup again."))
        return redirect("fabomatic_system_restore")
    path = found[0]
    try:
        checked = restore.inspect(path)  # again: the file sat on disk between the two requests
        saved = restore.restore(checked)
    except Exception as exc:
        logger.exception("Restore by member #%s failed", request.user.pk)
        messages.error(request, _("The restore failed, the database was not replaced: %(error)s") % {"error": exc})
        return redirect("fabomatic_system")
    finally:
        _discard(token)
    logger.warning("Database restored by member #%s from an upload; the previous one is in %s", request.user.pk, saved)
    messages.success(
        request, _("Database restored. The database as it was before is saved in %(path)s.") % {"path": saved}
    )
    return redirect("fabomatic_system")
