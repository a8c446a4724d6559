"""Portal side of fault reports, checks after use and refusals (machines/safety.py holds the rules).

- Fault reports: a list (open/closed, severity, machine; search), "Close" with a note (confirmed, audited), staff
  may file one; the machine page shows the open ones, the QR sticker and a new report code.
- Checks after use: a list and "Confirm checked" (confirmed, audited).
- Refusals: a read-only list; the machine and member pages show the latest ones.

Closing and confirming call ``safety.close_faults`` / ``safety.confirm_check`` and push the machine's tile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.humanize.templatetags.humanize import naturaltime
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.text import Truncator
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from fabomatic.admin import badge, short_datetime
from fabomatic.http import acting_member
from members.models import Member
from operations import audit
from operations.audited import AuditedAdmin

from . import faults, safety
from .confirm import confirm_page, confirmed
from .dashboard import events
from .filters import ConditionFilter, MachineFilter, MemberFilter
from .models import FaultReport, Machine, MachineCheck, Refusal, new_report_token

RECENT_REFUSALS = 10
PORTAL = FaultReport.Via.PORTAL


def _machine_url(machine_id: int) -> str:
    return reverse("admin:machines_machine_change", args=[machine_id])


def _log(model_admin: admin.ModelAdmin, request: HttpRequest, obj: Any, message: str, changes: dict) -> None:
    """Recent actions and the object's History (the admin's LogEntry), and the audit trail."""
    model_admin.log_change(request, obj, message)
    audit.record(obj, message=message, changes=changes)


# --- Closing fault reports ------------------------------------------------------------------------


def close_reports(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    reports: list[FaultReport],
    *,
    cancel_url: str,
    hidden: list[tuple[str, Any]],
) -> HttpResponse | None:
    """Close open fault reports with a note: confirm first, then close them (``safety.close_faults``), record each
    in the history and the audit trail, and push the machines' tiles. None once done (the caller redirects)."""
    reports = [r for r in reports if r.is_open]
    if not reports:
        model_admin.message_user(request, _("None of these fault reports is open."), messages.WARNING)
        return None
    if not confirmed(request):
        return confirm_page(
            request,
            model_admin,
            title=_("Close fault reports"),
            question=_("Close these fault reports?"),
            lines=[_report_line(r) for r in reports],
            confirm_label=_("Yes, close them"),
            cancel_url=cancel_url,
            hidden=hidden,
            note_field=True,
            warning=_("A machine that was out of order is free again at its next login."),
        )
    note = request.POST.get("note", "").strip()[:2000]
    staff = acting_member(request)
    now = timezone.now()
    closed = 0
    for machine_id in dict.fromkeys(r.machine_id for r in reports):
        mine = [r for r in reports if r.machine_id == machine_id]
        closed += safety.close_faults(
            mine[0].machine,
            by=staff,
            via=PORTAL,
            note=note,
            faults=FaultReport.objects.filter(pk__in=[r.pk for r in mine]),
            now=now,
        )
        events.push_on_commit([machine_id])
        message = _("Fault report closed in the portal.") + (" " + _("Note: %(note)s") % {"note": note} if note else "")
        for report in mine:
            changes = {"closed_at": [None, str(now)], "closed_by": [None, str(staff.pk)], "close_note": ["", note]}
            _log(model_admin, request, report, message, changes)
    model_admin.message_user(
        request,
        ngettext("%(n)d fault report closed.", "%(n)d fault reports closed.", closed) % {"n": closed},
        messages.SUCCESS,
    )
    return None


def _report_line(report: FaultReport) -> str:
    return _("%(machine)s, %(severity)s, %(when)s: “%(text)s”") % {
        "machine": report.machine,
        "severity": report.get_severity_display(),
        "when": short_datetime(report.created_at),
        "text": Truncator(report.description).chars(120),
    }


# --- Confirming checks after use ------------------------------------------------------------------


def confirm_checks(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    machines: list[Machine],
    *,
    cancel_url: str,
    hidden: list[tuple[str, Any]],
) -> HttpResponse | None:
    """ "Confirm checked" for these machines: confirm, then close each one's open checks (``safety.confirm_check``)."""
    pending = list(
        MachineCheck.objects.filter(machine__in=machines, checked_at__isnull=True).select_related(
            "machine", "use__member"
        )
    )
    if not pending:
        model_admin.message_user(request, _("No check is pending on these machines."), messages.WARNING)
        return None
    if not confirmed(request):
        lines = [
            _("%(machine)s, used by %(member)s until %(when)s.")
            % {
                "machine": check.machine,
                "member": check.use.member if check.use else "-",
                "when": short_datetime(check.requested_at),
            }
            for check in pending
        ]
        return confirm_page(
            request,
            model_admin,
            title=_("Confirm checked"),
            question=_("Did you check these machines after their use?"),
            lines=lines,
            confirm_label=_("Yes, I checked them"),
            cancel_url=cancel_url,
            hidden=hidden,
        )
    staff = acting_member(request)
    now = timezone.now()
    done = 0
    for machine in dict.fromkeys(check.machine for check in pending):
        done += safety.confirm_check(machine, by=staff, via=PORTAL, now=now)
        events.push_on_commit([machine.pk])
        for check in (c for c in pending if c.machine_id == machine.pk):
            changes = {"checked_at": [None, str(now)], "checked_by": [None, str(staff.pk)]}
            _log(model_admin, request, check, _("Check after use confirmed in the portal."), changes)
    model_admin.message_user(
        request, ngettext("%(n)d check confirmed.", "%(n)d checks confirmed.", done) % {"n": done}, messages.SUCCESS
    )
    return None


# --- List pages -----------------------------------------------------------------------------------


class RecordAdmin(AuditedAdmin, admin.ModelAdmin):
    """A record staff read and act on (close, confirm) but never edit: its page has no Save buttons."""

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        no_save = {"show_save": False, "show_save_and_continue": False, "show_save_and_add_another": False}
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **no_save})


class FaultStatusFilter(ConditionFilter):
    title = gettext_lazy("status")
    parameter_name = "open"
    meets = ("yes", gettext_lazy("Open"))
    fails = ("no", gettext_lazy("Closed"))

    def condition(self) -> Q:
        return Q(closed_at__isnull=True)


class CheckStatusFilter(ConditionFilter):
    title = gettext_lazy("status")
    parameter_name = "pending"
    meets = ("yes", gettext_lazy("To check"))
    fails = ("no", gettext_lazy("Checked"))

    def condition(self) -> Q:
        return Q(checked_at__isnull=True)


@admin.register(FaultReport)
class FaultReportAdmin(RecordAdmin):
    list_display = ["reported", "machine", "severity_badge", "summary", "reporter", "status", "age"]
    list_display_links = ["reported", "summary"]
    list_filter = [FaultStatusFilter, "severity", MachineFilter]
    list_select_related = ["machine", "closed_by"]
    search_fields = ["description", "reporter", "close_note", "machine__name"]
    autocomplete_fields = ["machine"]
    actions = ["close_selected"]
    ordering = ["-created_at"]
    closed_fields = ["closed_at", "closed_by", "closed_via", "close_note"]

    def get_fields(self, request: HttpRequest, obj: FaultReport | None = None) -> Any:
        if obj is None:  # staff filing a report from the portal
            return ["machine", "severity", "description"]
        return ["machine", "severity", "description", "reporter", "created_at", *self.closed_fields]

    def get_readonly_fields(self, request: HttpRequest, obj: FaultReport | None = None) -> list[str]:
        if obj is None:
            return []
        return ["machine", "severity", "description", "reporter", "created_at", *self.closed_fields]  # as reported

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        initial = super().get_changeform_initial_data(request)
        initial.setdefault("severity", FaultReport.Severity.OUT_OF_ORDER)
        return initial

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a record: the purge removes closed ones after the retention

    def save_model(self, request: HttpRequest, obj: FaultReport, form: Any, change: bool) -> None:
        if change:
            return
        staff = acting_member(request)
        fault = safety.report_fault(
            obj.machine, severity=obj.severity, description=obj.description, reporter=str(staff)
        )
        obj.pk, obj.created_at, obj.reporter = fault.pk, fault.created_at, fault.reporter
        obj._state.adding = False
        faults.announce(fault)

    @admin.display(description=gettext_lazy("reported"), ordering="created_at")
    def reported(self, report: FaultReport) -> str:
        return short_datetime(report.created_at)

    @admin.display(description=gettext_lazy("severity"), ordering="severity")
    def severity_badge(self, report: FaultReport) -> str:
        if report.severity == FaultReport.Severity.OUT_OF_ORDER:
            return badge(_("Out of order"), "error")
        return badge(_("Minor"), "warn")

    @admin.display(description=gettext_lazy("what is wrong"))
    def summary(self, report: FaultReport) -> str:
        return Truncator(report.description).chars(80)

    @admin.display(description=gettext_lazy("status"), ordering="closed_at")
    def status(self, report: FaultReport) -> str:
        if report.is_open:
            return badge(_("Open"), "error" if report.locks else "warn")
        return badge(_("Closed"), "muted", f"{short_datetime(report.closed_at)} {report.closed_by or ''}".strip())

    @admin.display(description=gettext_lazy("age"), ordering="created_at")
    def age(self, report: FaultReport) -> str:
        return str(naturaltime(report.created_at))

    @admin.action(description=gettext_lazy("Close the selected fault reports"), permissions=["change"])
    def close_selected(self, request: HttpRequest, queryset: QuerySet[FaultReport]) -> HttpResponse | None:
        reports = list(queryset.select_related("machine").order_by("created_at"))
        hidden = [("action", "close_selected"), *((admin.helpers.ACTION_CHECKBOX_NAME, r.pk) for r in reports)]
        return close_reports(
            self, request, reports, cancel_url=reverse("admin:machines_faultreport_changelist"), hidden=hidden
        )


@admin.register(MachineCheck)
class MachineCheckAdmin(RecordAdmin):
    list_display = ["machine", "requested", "used_by", "status", "checked_by", "checked_via"]
    list_filter = [CheckStatusFilter, MachineFilter]
    list_select_related = ["machine", "use__member", "checked_by"]
    fields = ["machine", "use", "requested_at", "checked_at", "checked_by", "checked_via"]
    readonly_fields = ["machine", "use", "requested_at", "checked_at", "checked_by", "checked_via"]
    actions = ["confirm_selected"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the bridge opens them when a use closes

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=gettext_lazy("requested"), ordering="requested_at")
    def requested(self, check: MachineCheck) -> str:
        return short_datetime(check.requested_at)

    @admin.display(description=gettext_lazy("used by"))
    def used_by(self, check: MachineCheck) -> str:
        return str(check.use.member) if check.use else "-"

    @admin.display(description=gettext_lazy("status"), ordering="checked_at")
    def status(self, check: MachineCheck) -> str:
        if check.checked_at is None:
            return badge(_("To check"), "warn")
        return badge(_("Checked"), "ok", short_datetime(check.checked_at))

    @admin.action(description=gettext_lazy("Confirm checked"), permissions=["change"])
    def confirm_selected(self, request: HttpRequest, queryset: QuerySet[MachineCheck]) -> HttpResponse | None:
        machines = list(Machine.objects.filter(pk__in=queryset.values("machine_id")))
        hidden = [("action", "confirm_selected"), *((admin.helpers.ACTION_CHECKBOX_NAME, c.pk) for c in queryset)]
        return confirm_checks(
            self, request, machines, cancel_url=reverse("admin:machines_machinecheck_changelist"), hidden=hidden
        )


@admin.register(Refusal)
class RefusalAdmin(admin.ModelAdmin):
    """Read-only: the bridge writes them; the purge deletes them after ``REFUSAL_RETENTION_DAYS``."""

    list_display = ["when", "reason", "machine", "member", "uid"]
    list_filter = ["reason", MachineFilter, MemberFilter]
    list_select_related = ["machine", "member"]
    search_fields = ["=uid", "member__first_name", "member__last_name", "machine__name"]
    date_hierarchy = "at"
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=gettext_lazy("when"), ordering="at")
    def when(self, refusal: Refusal) -> str:
        return short_datetime(refusal.at)


# --- The machine page -----------------------------------------------------------------------------


def machine_context(request: HttpRequest, machine: Machine) -> dict[str, Any]:
    """What the machine page shows of its faults, its pending check and its refusals, and which buttons."""
    user = request.user
    return {
        "open_faults": list(
            FaultReport.objects.filter(machine=machine, closed_at__isnull=True).order_by("-created_at")
        ),
        "pending_check": MachineCheck.objects.filter(machine=machine, checked_at__isnull=True)
        .select_related("use__member")
        .order_by("requested_at")
        .first(),
        "recent_refusals": Refusal.objects.filter(machine=machine).select_related("member")[:RECENT_REFUSALS],
        "refusals_url": reverse("admin:machines_refusal_changelist") + f"?machine__id__exact={machine.pk}",
        "faults_url": reverse("admin:machines_faultreport_changelist") + f"?machine__id__exact={machine.pk}",
        "report_add_url": reverse("admin:machines_faultreport_add") + f"?machine={machine.pk}",
        "can_close_faults": user.has_perm("machines.change_faultreport"),
        "can_confirm_check": user.has_perm("machines.change_machinecheck"),
        "can_report": user.has_perm("machines.add_faultreport"),
        "can_new_code": user.has_perm("machines.change_machine"),
    }


def member_context(member: Member) -> dict[str, Any]:
    """The member page's latest refusals."""
    return {
        "recent_refusals": Refusal.objects.filter(member=member).select_related("machine")[:RECENT_REFUSALS],
        "refusals_url": reverse("admin:machines_refusal_changelist") + f"?member__id__exact={member.pk}",
    }


def machine_urls(model_admin: admin.ModelAdmin) -> list[URLPattern]:
    """The machine page's fault, check and sticker pages (``MachineAdmin.get_urls``)."""

    def view(handler: Callable[..., HttpResponse], permission: str, post: bool) -> Callable[..., HttpResponse]:
        def wrapped(request: HttpRequest, machine_id: int) -> HttpResponse:
            if post and request.method != "POST":  # a change is never a GET
                return HttpResponseNotAllowed(["POST"])
            machine = get_object_or_404(Machine, pk=machine_id)
            if not request.user.has_perm(permission):
                raise PermissionDenied
            return handler(model_admin, request, machine)

        return model_admin.admin_site.admin_view(wrapped)

    return [
        path("<int:machine_id>/sticker/", view(sticker_view, "machines.view_machine", False), name="machines_sticker"),
        path(
            "<int:machine_id>/faults/close/",
            view(close_machine_faults, "machines.change_faultreport", True),
            name="machines_machine_close_faults",
        ),
        path(
            "<int:machine_id>/check/confirm/",
            view(confirm_machine_check, "machines.change_machinecheck", True),
            name="machines_machine_confirm_check",
        ),
        path(
            "<int:machine_id>/report-code/",
            view(new_report_code, "machines.change_machine", True),
            name="machines_machine_report_code",
        ),
    ]


def sticker_view(model_admin: admin.ModelAdmin, request: HttpRequest, machine: Machine) -> HttpResponse:
    url = faults.report_url(request, machine)
    return render(request, "machines/report/sticker.html", {"machine": machine, "url": url, "qr": faults.qr_svg(url)})


def close_machine_faults(model_admin: admin.ModelAdmin, request: HttpRequest, machine: Machine) -> HttpResponse:
    reports = list(FaultReport.objects.filter(machine=machine, closed_at__isnull=True).select_related("machine"))
    back = _machine_url(machine.pk)
    return close_reports(model_admin, request, reports, cancel_url=back, hidden=[]) or HttpResponseRedirect(back)


def confirm_machine_check(model_admin: admin.ModelAdmin, request: HttpRequest, machine: Machine) -> HttpResponse:
    back = _machine_url(machine.pk)
    return confirm_checks(model_admin, request, [machine], cancel_url=back, hidden=[]) or HttpResponseRedirect(back)


def new_report_code(model_admin: admin.ModelAdmin, request: HttpRequest, machine: Machine) -> HttpResponse:
    """A new secret for the machine's report page: the printed sticker stops working (confirmed, audited)."""
    back = _machine_url(machine.pk)
    if not confirmed(request):
        return confirm_page(
            request,
            model_admin,
            title=_("New fault report code"),
            question=_("Give %(machine)s a new fault report code?") % {"machine": machine},
            lines=[
                _("The sticker on the machine stops working: its QR code opens a “not found” page."),
                _("Print the new sticker and put it on the machine."),
            ],
            confirm_label=_("Yes, make a new code"),
            cancel_url=back,
            danger=True,
        )
    Machine.objects.filter(pk=machine.pk).update(report_token=new_report_token())
    model_admin.log_change(request, machine, _("New fault report code: the old sticker no longer works."))
    audit.record(machine, message="New fault report code (the old sticker no longer works)")
    model_admin.message_user(
        request, _("New fault report code made: print the new sticker for the machine."), messages.SUCCESS
    )
    return HttpResponseRedirect(back)
