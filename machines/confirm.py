"""The portal's one-click actions behind a confirmation page, each recorded in the admin's history.

Ending a use, remote start and stop, and recording maintenance change the machines' history or what a person on a
machine is doing: the first POST shows what will happen (who is logged out, which uses end and how), the second
(``post=yes``, like Django's delete confirmation) does it and writes a LogEntry (Recent actions, the object's
History). The admin classes in ``machines/admin.py`` call these; the rules stay in the services.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop, ngettext

from fabomatic.admin import format_hours, short_datetime
from fabomatic.http import acting_member
from operations import audit
from telemetry import remote

from . import services
from .dashboard import events
from .models import Machine, MaintenancePlan, Use


def confirmed(request: HttpRequest) -> bool:
    return request.POST.get("post") == "yes"


def confirm_page(
    request: HttpRequest,
    model_admin: admin.ModelAdmin,
    *,
    title: str,
    question: str,
    lines: Iterable[str],
    confirm_label: str,
    cancel_url: str,
    hidden: Sequence[tuple[str, Any]] = (),
    note_field: bool = False,
    danger: bool = False,
    warning: str = "",
) -> TemplateResponse:
    """The intermediate page: what will happen, a confirm button that re-posts ``hidden`` with ``post=yes``."""
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": title,
        "question": question,
        "lines": list(lines),
        "confirm_label": confirm_label,
        "cancel_url": cancel_url,
        "hidden": list(hidden),
        "note_field": note_field,
        "danger": danger,
        "warning": warning,
    }
    return TemplateResponse(request, "admin/fabomatic/confirm_action.html", context)


def log_action(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    obj: Any,
    message: str,
    params: dict[str, Any] | None = None,
    *,
    created: bool = False,
    changes: dict[str, list[Any]] | None = None,
) -> None:
    """Recent actions and the object's History (the admin's LogEntry), and the audit trail.

    ``message`` is a msgid (``gettext_noop``) with its ``params``: both keep them untranslated and show them in the
    reader's language (``audit.history_text``, ``audit.message_of``).
    """
    stored = audit.history_message(message, params)
    if created:
        model_admin.log_addition(request, obj, stored)
    else:
        model_admin.log_change(request, obj, stored)
    audit.record(obj, message=message, params=params, changes=changes, created=created)


def _machine_url(machine: Machine) -> str:
    return reverse("admin:machines_machine_change", args=[machine.pk])


# --- End uses ---------------------------------------------------------------------------------------------------


def end_uses(model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Use]) -> HttpResponse | None:
    """The "End the selected uses now" action: confirm, then stop each on its board (online) or close it here."""
    uses = list(queryset.filter(ended_at__isnull=True).select_related("member", "machine").order_by("started_at"))
    if not uses:
        model_admin.message_user(request, _("None of the selected uses was in progress."), messages.WARNING)
        return None
    if not confirmed(request):
        return confirm_page(
            request,
            model_admin,
            title=_("End uses"),
            question=_("End these uses now?"),
            lines=[_end_line(use) for use in uses],
            confirm_label=_("Yes, end them"),
            cancel_url=reverse("admin:machines_use_changelist"),
            hidden=[("action", "end_now"), *((admin.helpers.ACTION_CHECKBOX_NAME, use.pk) for use in uses)],
            danger=True,
        )
    staff = acting_member(request)
    ended = stopping = 0
    for use in uses:
        try:
            closed_here = remote.end_use(use, by=staff)
        except remote.RemoteCommandError as exc:
            model_admin.message_user(
                request,
                _("The use of %(member)s on %(machine)s was not ended: %(reason)s")
                % {"member": use.member, "machine": use.machine, "reason": exc},
                messages.ERROR,
            )
            continue
        if closed_here:
            changes = {"ended_at": [None, str(use.ended_at)], "duration": [None, str(use.duration)]}
            log_action(
                model_admin,
                request,
                use,
                gettext_noop("Ended from the portal (board offline): closed now."),
                changes=changes,
            )
            events.push_on_commit([use.machine_id])
            ended += 1
        else:
            text = gettext_noop("Remote stop sent to end this use of %(member)s.")
            log_action(model_admin, request, use, text, {"member": use.member})
            log_action(model_admin, request, use.machine, text, {"member": use.member})
            stopping += 1
    if ended:
        model_admin.message_user(
            request, ngettext("%(n)d use ended.", "%(n)d uses ended.", ended) % {"n": ended}, messages.SUCCESS
        )
    if stopping:
        model_admin.message_user(
            request,
            ngettext(
                "Stop sent to %(n)d board: the use ends when the board reports it.",
                "Stop sent to %(n)d boards: each use ends when its board reports it.",
                stopping,
            )
            % {"n": stopping},
            messages.SUCCESS,
        )
    return None


def _end_line(use: Use) -> str:
    values = {"member": use.member, "machine": use.machine, "since": short_datetime(use.started_at)}
    if use.machine.is_online():
        return (
            _("%(member)s on %(machine)s since %(since)s: the board is online, it is asked to stop (remote stop).")
            % values
        )
    return _("%(member)s on %(machine)s since %(since)s: the board is offline, the use is closed here now.") % values


# --- Remote start and stop --------------------------------------------------------------------------------------


def remote_command(
    model_admin: admin.ModelAdmin, request: HttpRequest, machine: Machine, action: Literal["start", "stop"]
) -> HttpResponse:
    """Remote start/stop from the machine page: confirm (saying who is logged out), then send and record it."""
    current = Use.objects.filter(machine=machine, ended_at__isnull=True).select_related("member").first()
    staff = acting_member(request)
    if not confirmed(request):
        if action == "stop":
            who = (
                _("%(member)s, on it since %(since)s, is logged out.")
                % {"member": current.member, "since": short_datetime(current.started_at)}
                if current is not None
                else _("Nobody is on record on it; the board logs out whoever is on it, if anyone.")
            )
            lines = [who]
        else:
            lines = [_("The board logs you (%(member)s) in as if you swiped your card.") % {"member": staff}]
        return confirm_page(
            request,
            model_admin,
            title=_("Remote stop") if action == "stop" else _("Remote start"),
            question=(_("Stop %(machine)s?") if action == "stop" else _("Start %(machine)s?")) % {"machine": machine},
            lines=lines,
            confirm_label=_("Yes, stop it") if action == "stop" else _("Yes, start it"),
            cancel_url=_machine_url(machine),
            danger=action == "stop",
        )
    try:
        remote.send_remote_command(machine, action, staff)
    except remote.RemoteCommandError as exc:
        model_admin.message_user(request, str(exc), messages.ERROR)
        return HttpResponseRedirect(_machine_url(machine))
    if action == "start":
        log_action(
            model_admin, request, machine, gettext_noop("Remote start with the card of %(member)s."), {"member": staff}
        )
        text = _("Start sent to %(machine)s: the board logs you in as if you swiped your card.")
    else:
        if current is not None:
            log_action(
                model_admin,
                request,
                machine,
                gettext_noop("Remote stop: logged out %(member)s."),
                {"member": current.member},
            )
        else:
            log_action(model_admin, request, machine, gettext_noop("Remote stop: nobody was on record on it."))
        text = _("Stop sent to %(machine)s: the board logs its user out.")
    model_admin.message_user(request, text % {"machine": machine}, messages.SUCCESS)
    return HttpResponseRedirect(_machine_url(machine))


# --- Record maintenance -------------------------------------------------------------------------------------------


def record_maintenance(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    plans: list[MaintenancePlan],
    *,
    hidden: Sequence[tuple[str, Any]] = (),
    cancel_url: str,
) -> HttpResponse | None:
    """Record an intervention now on each plan item, with a note: confirm first, then record and log each one."""
    if not confirmed(request):
        return confirm_page(
            request,
            model_admin,
            title=_("Record intervention"),
            question=_("Record that this maintenance was done now?"),
            lines=[
                _("“%(plan)s” on %(machine)s: its counter restarts from the hour meter (%(hours)s).")
                % {"plan": plan.description, "machine": plan.machine, "hours": format_hours(plan.machine.hours)}
                for plan in plans
            ],
            confirm_label=_("Yes, record it"),
            cancel_url=cancel_url,
            hidden=hidden,
            note_field=True,
        )
    note = request.POST.get("note", "").strip()[:2000]
    staff = acting_member(request)
    done = 0
    for machine_id in dict.fromkeys(p.machine_id for p in plans):
        items = [p for p in plans if p.machine_id == machine_id]
        recorded = services.record_interventions(machine=items[0].machine, member=staff, plans=items, note=note)
        events.push_on_commit([machine_id])
        for intervention in recorded:
            message = (
                gettext_noop("Intervention recorded: “%(plan)s”. Note: %(note)s")
                if note
                else gettext_noop("Intervention recorded: “%(plan)s”.")
            )
            params = {"plan": intervention.plan.description, "note": note}
            if intervention.pk is not None:  # bulk_create returns the keys on SQLite and PostgreSQL
                log_action(
                    model_admin, request, intervention, message, params, created=True, changes={"note": [None, note]}
                )
            log_action(model_admin, request, intervention.machine, message, params)
        done += len(recorded)
    model_admin.message_user(
        request,
        ngettext(
            "%(n)d intervention recorded; its counter restarts from the current hour meter.",
            "%(n)d interventions recorded; their counters restart from the current hour meter.",
            done,
        )
        % {"n": done},
        messages.SUCCESS,
    )
    return None
