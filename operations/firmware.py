"""The portal's Firmware page (under the System page): upload images, start and follow rollouts, see drift.

Portal administrators only (like backups and board secrets: a firmware image runs on every machine it reaches);
other staff get 403. The rollout itself runs in ``manage.py ota_rollout`` (telemetry/rollout.py), which the page
launches and, while a rollout runs without it (after a reboot), launches again.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop
from django.views.decorators.http import require_GET, require_POST

from fabomatic.http import acting_member
from machines.confirm import confirm_page, confirmed
from telemetry import firmware, health, rollout
from telemetry.models import Board, FirmwareImage, OtaPush, Rollout

from . import audit
from .system import _may_administer

logger = logging.getLogger(__name__)

RECENT_ROLLOUTS = 5
MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # a release zip of a 4 MB image, with room to spare


def _administrators_only(request: HttpRequest) -> None:
    if not _may_administer(request):
        raise PermissionDenied


def firmware_view(request: HttpRequest) -> HttpResponseBase:
    _administrators_only(request)
    if request.method == "POST":
        return _upload(request)
    rollout.launch_runner()  # after a reboot: resume the rollouts (nothing when none is pending)
    images = list(FirmwareImage.objects.defer("data").select_related("uploaded_by"))
    boards = list(Board.objects.select_related("machine").order_by("machine_id"))
    health.annotate(boards, heap=False)  # environment and version; the heap trend is the System page's
    for image in images:
        image.boards = [b for b in boards if b.environment == image.environment]  # type: ignore[attr-defined]
    context = {
        **admin.site.each_context(request),
        "title": _("Firmware"),
        "images": images,
        "boards": boards,
        "rollouts": _rollouts_state(),
        "max_upload": MAX_UPLOAD_BYTES,
        "status_url": reverse("fabomatic_firmware_status"),
    }
    return TemplateResponse(request, "admin/firmware.html", context)


def _upload(request: HttpRequest) -> HttpResponse:
    upload = request.FILES.get("image")
    try:
        if upload is None:
            raise ValidationError(_("Choose a .bin image or a release zip."))
        if upload.size is None or upload.size > MAX_UPLOAD_BYTES:
            raise ValidationError(_("The file is larger than 8 MB."))
        image = firmware.read_upload(
            upload.name or "", upload.read(), request.POST.get("environment", ""), request.POST.get("version", "")
        )
        with transaction.atomic():
            saved = FirmwareImage.objects.create(
                environment=image.environment,
                version=image.version,
                data=image.data,
                md5=image.md5,
                size=image.size,
                filename=(upload.name or "")[:200],
                uploaded_by=acting_member(request),
            )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("fabomatic_firmware")
    except IntegrityError:
        messages.error(request, _("This environment already has an image of this version."))
        return redirect("fabomatic_firmware")
    audit.record(
        saved,
        message=gettext_noop("Firmware image %(image)s uploaded (%(size)s bytes, MD5 %(md5)s)."),
        params={"image": str(saved), "size": saved.size, "md5": saved.md5},
        request=request,
    )
    cache_reset()
    messages.success(request, _("Image %(image)s uploaded.") % {"image": saved})
    return redirect("fabomatic_firmware")


def cache_reset() -> None:
    from django.core.cache import cache

    cache.delete(health.BEHIND_CACHE_KEY)


@require_POST
def start_view(request: HttpRequest) -> HttpResponseBase:
    """Choose an image and boards → a confirmation listing the canary and the others → the rollout."""
    _administrators_only(request)
    image = get_object_or_404(FirmwareImage.objects.defer("data"), pk=request.POST.get("image") or 0)
    try:
        chosen = [int(pk) for pk in request.POST.getlist("machine")]
    except ValueError:
        chosen = []
    eligible = {b.machine_id: b for b in rollout.eligible_boards(image)}
    chosen = [pk for pk in dict.fromkeys(chosen) if pk in eligible]
    if not chosen:
        messages.error(request, _("Choose at least one board of the environment %(env)s.") % {"env": image.environment})
        return redirect("fabomatic_firmware")
    if not confirmed(request):
        lines = [
            _("First (canary): %(board)s, now %(version)s")
            % {"board": eligible[pk].machine, "version": eligible[pk].firmware}
            if i == 0
            else _("Then: %(board)s, now %(version)s")
            % {"board": eligible[pk].machine, "version": eligible[pk].firmware}
            for i, pk in enumerate(chosen)
        ]
        return confirm_page(
            request,
            admin.site._registry[Rollout],
            title=_("Update the firmware"),
            question=_("Flash %(image)s on these boards, one at a time, each when its machine is idle?")
            % {"image": image},
            lines=lines,
            confirm_label=_("Yes, update them"),
            cancel_url=reverse("fabomatic_firmware"),
            hidden=[("image", image.pk), *(("machine", pk) for pk in chosen)],
            danger=True,
            warning=_("A board that does not come back must be flashed by USB: keep the release zip at hand."),
        )
    try:
        rollout.start(image, chosen, request=request)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("fabomatic_firmware")
    rollout.launch_runner()
    messages.success(request, _("Rollout started: the canary goes first."))
    return redirect("fabomatic_firmware")


@require_POST
def cancel_view(request: HttpRequest, rollout_id: int) -> HttpResponseBase:
    _administrators_only(request)
    rollout.cancel(get_object_or_404(Rollout, pk=rollout_id), request=request)
    messages.success(request, _("Rollout cancelled: boards not yet flashed keep their firmware."))
    return redirect("fabomatic_firmware")


@require_GET
def status_view(request: HttpRequest) -> JsonResponse:
    """The recent rollouts and their pushes, polled by the page every 2 s."""
    _administrators_only(request)
    state = _rollouts_state()
    if any(r["state"] == Rollout.State.RUNNING for r in state):
        rollout.launch_runner()  # a no-op while one runs
    return JsonResponse({"rollouts": state, "runner": rollout.runner_running(), "time": timezone.now().isoformat()})


def _rollouts_state() -> list[dict[str, Any]]:
    recent = list(Rollout.objects.select_related("image", "started_by").defer("image__data")[:RECENT_ROLLOUTS])
    pushes = OtaPush.objects.filter(rollout__in=recent).select_related("machine").order_by("rollout", "position")
    by_rollout: dict[int, list[dict[str, Any]]] = {r.pk: [] for r in recent}
    for push in pushes:
        by_rollout[push.rollout_id].append(
            {
                "machine": str(push.machine),
                "canary": push.is_canary,
                "state": push.state,
                "state_label": str(push.get_state_display()),
                "reason": str(push.get_reason_display()) if push.reason else "",
                "detail": push.detail,
                "from_version": push.from_version,
            }
        )
    return [
        {
            "id": r.pk,
            "image": str(r.image),
            "state": r.state,
            "state_label": str(r.get_state_display()),
            "started_by": str(r.started_by or ""),
            "started_at": timezone.localtime(r.started_at).strftime("%Y-%m-%d %H:%M"),
            "cancel_url": reverse("fabomatic_firmware_cancel", args=[r.pk]) if r.state == Rollout.State.RUNNING else "",
            "pushes": by_rollout[r.pk],
        }
        for r in recent
    ]
