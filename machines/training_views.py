"""Sign-off at the machine, from a trainer's phone: arm a machine for 60 s, the trainee swipes, the page shows who
was trained.

``safety.arm`` does the arming; the bridge's refused-swipe path (``safety.sign_off``) consumes it and grants the
authorization with the trainer. The page polls :func:`status_view` (a small JSON) every second. Only trainers of the
machine (portal administrators for all) may arm, disarm or watch it; arming and disarming go to the audit trail,
the training itself is the authorization's ``trained_by``.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from fabomatic.admin import short_datetime
from fabomatic.http import AuthenticatedHttpRequest
from operations import audit

from . import safety
from .models import Machine, TrainingArm

TEMPLATE = "admin/machines/sign_off.html"


def _page(request: AuthenticatedHttpRequest, context: dict[str, Any], status: int = 200) -> TemplateResponse:
    context = {**admin.site.each_context(request), "title": _("Sign off a trainee"), **context}
    return TemplateResponse(request, TEMPLATE, context, status=status)


def _refused(request: AuthenticatedHttpRequest, machine: Machine) -> TemplateResponse:
    message = _("You are not a trainer of %(machine)s: only its trainers and portal administrators may sign off here.")
    return _page(request, {"refused": message % {"machine": machine}, "machines": []}, status=403)


def _back(machine: Machine) -> HttpResponseRedirect:
    return HttpResponseRedirect(f"{reverse('machines_sign_off')}?{urlencode({'machine': machine.pk})}")


def sign_off_view(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The machines the staff member trains; with ``?machine=<id>``, that machine's arming, live."""
    machines = safety.trainable_machines(request.user).order_by("name")
    selected = None
    wanted = request.GET.get("machine", "")
    if wanted.isdigit():
        selected = get_object_or_404(Machine, pk=int(wanted))
        if not safety.may_train(request.user, selected):
            return _refused(request, selected)
    context = {
        "machines": machines.only("pk", "name"),
        "selected": selected,
        "status": status_of(selected) if selected is not None else None,
        "arm_seconds": safety.ARM_SECONDS,
    }
    return _page(request, context)


def arm_view(request: AuthenticatedHttpRequest, machine_id: int) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    machine = get_object_or_404(Machine.objects.select_related("type"), pk=machine_id)
    try:
        arming = safety.arm(machine, request.user)
    except PermissionError:
        return _refused(request, machine)
    audit.record(
        machine,
        message=gettext_noop(
            "Sign-off armed for %(seconds)d s by %(trainer)s: the next card without authorization is trained."
        ),
        params={"seconds": safety.ARM_SECONDS, "trainer": str(request.user)},
        changes={"sign_off_until": [None, arming.expires_at.isoformat()]},
        actor=request.user,
        request=request,
    )
    return _back(machine)


def disarm_view(request: AuthenticatedHttpRequest, machine_id: int) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    machine = get_object_or_404(Machine, pk=machine_id)
    if not safety.may_train(request.user, machine):
        return _refused(request, machine)
    if safety.disarm(machine):
        audit.record(
            machine,
            message=gettext_noop("Sign-off disarmed by %(trainer)s."),
            params={"trainer": str(request.user)},
            actor=request.user,
            request=request,
        )
    return _back(machine)


def status_view(request: AuthenticatedHttpRequest, machine_id: int) -> JsonResponse:
    machine = get_object_or_404(Machine, pk=machine_id)
    if not safety.may_train(request.user, machine):
        return JsonResponse({"error": _("You are not a trainer of this machine.")}, status=403)
    response = JsonResponse(status_of(machine))
    response["Cache-Control"] = "no-store"
    return response


def status_of(machine: Machine) -> dict[str, Any]:
    """The machine's latest arming, as the page shows it: ``state`` is armed, trained, ended or idle."""
    now = timezone.now()
    arming = (
        TrainingArm.objects.filter(machine=machine)
        .select_related("trainer", "trainee")
        .order_by("-armed_at", "-pk")
        .first()
    )
    if arming is None:
        return {"state": "idle", "seconds_left": 0, "message": _("Not armed.")}
    if arming.used_at is not None:
        trainee = str(arming.trainee) if arming.trainee_id else _("an erased member")
        return {
            "state": "trained",
            "seconds_left": 0,
            "trainee": trainee,
            "message": _("%(trainee)s was trained by %(trainer)s at %(when)s.")
            % {"trainee": trainee, "trainer": arming.trainer, "when": short_datetime(arming.used_at)},
        }
    if arming.expires_at > now:
        left = max(1, round((arming.expires_at - now).total_seconds()))
        return {
            "state": "armed",
            "seconds_left": left,
            "message": _("Armed by %(trainer)s: the trainee swipes their card now.") % {"trainer": arming.trainer},
        }
    return {
        "state": "ended",
        "seconds_left": 0,
        "message": _("The last arming (%(when)s) ended without a card.") % {"when": short_datetime(arming.armed_at)},
    }
