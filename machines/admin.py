"""Portal pages for machines, their types, plans, authorizations and history (uses, interventions).

History is read-only: staff corrections (end an open use, fix its times, register a missed use, record maintenance)
go through ``machines.services`` so the hour meter and the maintenance counters stay consistent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import Count, F, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, gettext_noop, ngettext

from fabomatic.admin import (
    AddAnotherMixin,
    CappedPaginator,
    DateRangeFilter,
    ExcelExportMixin,
    InUseDeleteMixin,
    badge,
    format_hours,
    format_seconds,
    replay_flag,
    short_datetime,
)
from fabomatic.http import AuthenticatedHttpRequest, acting_member
from integrations import outbox
from operations import audit
from operations.audited import AuditedAdmin
from telemetry.credentials import issue_board_credentials

from . import charts, confirm, fault_admin, history_search, services
from .dashboard import events
from .filters import (
    MachineFilter,
    MaintenanceFilter,
    MemberFilter,
    OnlineFilter,
    PlanDueFilter,
    UseStatusFilter,
)
from .forms import InterventionAddForm, UseAddForm, UseCorrectForm
from .models import Authorization, Intervention, Machine, MachineType, MaintenancePlan, Use
from .resources import InterventionResource, MachineResource, UseResource
from .training_admin import MachineTrainingInline, TrainersFieldMixin
from .training_forms import MachineTypeForm

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

RECENT = 20


class _MachineCount(TypedDict):  # what MachineTypeAdmin.get_queryset() annotates
    n_machines: int


def changelist_url(model: str, **params: Any) -> str:
    return reverse(f"admin:machines_{model}_changelist") + ("?" + urlencode(params) if params else "")


def plan_badge(plan: MaintenancePlan, machine_hours: float) -> str:
    """One badge per plan item: its short name, hours since the last intervention / interval."""
    since = plan.hours_since(machine_hours)
    text = f"{plan.short_label} {format_hours(since)}/{format_hours(plan.hours_between)}"
    if plan.is_due(machine_hours):
        return badge(text, "error", _("Overdue: %(description)s") % {"description": plan.description})
    if plan.is_due_soon(machine_hours):
        return badge(text, "warn", _("Due soon: %(description)s") % {"description": plan.description})
    return badge(text, "ok", plan.description)


class LiveUpdatesMixin:
    """Portal edits that change a machine's tile reach open dashboards once they commit.

    ``machine_field`` names the machine of a row (``None``: the row is the machine itself).
    """

    machine_field: str | None = "machine"

    def machine_id_of(self, obj: Any) -> int:
        return obj.pk if self.machine_field is None else getattr(obj, f"{self.machine_field}_id")

    def push_live(self, machine_ids: Any) -> None:
        events.push_on_commit(machine_ids)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)  # type: ignore[misc]
        self.push_live([self.machine_id_of(obj)])

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)  # type: ignore[misc]
        self.push_live([self.machine_id_of(form.instance)])  # inlines: maintenance plans

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        machine_id = self.machine_id_of(obj)
        super().delete_model(request, obj)  # type: ignore[misc]
        self.push_live([machine_id])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        machine_ids = [self.machine_id_of(obj) for obj in queryset]
        super().delete_queryset(request, queryset)  # type: ignore[misc]
        self.push_live(machine_ids)


# --- machine types --------------------------------------------------------------------------------


@admin.register(MachineType)
class MachineTypeAdmin(AuditedAdmin, TrainersFieldMixin, InUseDeleteMixin, admin.ModelAdmin):
    list_display = ["name", "logoff", "grace", "requires_authorization", "machine_count"]
    search_fields = ["name"]
    form = MachineTypeForm
    trainers_help = gettext_lazy(
        "Staff who may grant, renew and sign off authorizations for every machine of this type (portal "
        "administrators always may). Only members with portal access are listed."
    )
    fieldsets = [
        (None, {"fields": ["name", "logoff_minutes", "grace_minutes", "requires_authorization"]}),
        (gettext_lazy("Training and safety"), {"fields": ["training_expiry", "training_days", "check_after_use"]}),
        (gettext_lazy("Trainers"), {"fields": ["trainers"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[MachineType]:
        return super().get_queryset(request).annotate(n_machines=Count("machines"))

    @admin.display(description=gettext_lazy("auto-logoff"), ordering="logoff_minutes")
    def logoff(self, mtype: MachineType) -> str:
        return _("%(n)d min") % {"n": mtype.logoff_minutes} if mtype.logoff_minutes else _("off")

    @admin.display(description=gettext_lazy("power-off grace"), ordering="grace_minutes")
    def grace(self, mtype: MachineType) -> str:
        return _("%(n)d min") % {"n": mtype.grace_minutes} if mtype.grace_minutes else _("none")

    @admin.display(description=gettext_lazy("machines"), ordering="n_machines")
    def machine_count(self, mtype: WithAnnotations[MachineType, _MachineCount]) -> str:
        return format_html('<a href="{}">{}</a>', changelist_url("machine", type__id__exact=mtype.pk), mtype.n_machines)

    def in_use_message(self, mtype: MachineType) -> str | None:
        count = mtype.machines.count()
        if not count:
            return None
        return ngettext(
            "The type “%(type)s” cannot be deleted: %(count)d machine is of this type. Change its type first.",
            "The type “%(type)s” cannot be deleted: %(count)d machines are of this type. Change their type first.",
            count,
        ) % {"type": mtype, "count": count}


# --- machines -------------------------------------------------------------------------------------


URL_FIELDS: Mapping[type[models.Field], Mapping[str, Any]] = {models.URLField: {"assume_scheme": "https"}}


class MaintenancePlanInline(admin.TabularInline):
    model = MaintenancePlan
    formfield_overrides = URL_FIELDS
    extra = 0
    fields = ["description", "hours_between", "lcd_message", "instructions_url", "status", "record"]
    readonly_fields = ["status", "record"]
    verbose_name_plural = gettext_lazy("maintenance plan")
    add_another = gettext_lazy("Add another maintenance item")

    @admin.display(description=gettext_lazy("since last intervention"))
    def status(self, plan: MaintenancePlan) -> str:
        if plan.pk is None:
            return "-"
        return plan_badge(plan, plan.machine.hours)

    @admin.display(description="")
    def record(self, plan: MaintenancePlan) -> str:
        if plan.pk is None:
            return ""
        return format_html(
            '<button type="submit" class="button" formaction="{}" formmethod="post" formnovalidate '
            'name="record" value="{}">{}</button>',
            reverse("admin:machines_machine_record", args=[plan.machine_id, plan.pk]),
            plan.pk,
            _("Record intervention"),
        )


def _board_inline() -> type[admin.StackedInline]:
    from telemetry.models import Board

    class BoardInline(admin.StackedInline):
        model = Board
        can_delete = False
        extra = 0
        max_num = 0
        readonly_fields = ("serial", "ip_address", "firmware", "free_heap", "last_seen")
        fields = readonly_fields
        verbose_name_plural = gettext_lazy("board (as it last announced itself)")

        def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
            return False

    return BoardInline


@admin.register(Machine)
class MachineAdmin(
    AuditedAdmin, TrainersFieldMixin, AddAnotherMixin, LiveUpdatesMixin, ExcelExportMixin, admin.ModelAdmin
):
    machine_field = None
    resource_classes = [MachineResource]
    show_change_form_export = False
    change_form_template = "admin/machines/machine/change_form.html"
    change_list_template = "admin/machines/machine/change_list.html"
    list_display = [
        "id",
        "name",
        "type",
        "hour_meter",
        "blocked_badge",
        "online",
        "maintenance",
        "last_seen",
        "firmware",
    ]
    list_display_links = ["id", "name"]
    list_filter = [OnlineFilter, MaintenanceFilter, "blocked", "type"]
    list_select_related = ["type", "board"]
    list_per_page = 50  # each row draws badges and a 12-week chart row: 100 rows cost ~200 ms at 1,000 machines
    search_fields = ["name", "=id"]
    inlines = [MaintenancePlanInline, MachineTrainingInline, _board_inline()]
    fieldsets = [
        (None, {"fields": ["id", "name", "type", "blocked"]}),
        (
            gettext_lazy("Hour meter"),
            {
                "fields": ["hours"],
                "description": gettext_lazy(
                    "Hours of closed use. Correct uses rather than the meter: the meter follows them."
                ),
                "classes": ["collapse"],
            },
        ),
        (gettext_lazy("Trainers"), {"fields": ["trainers"], "classes": ["collapse"]}),
    ]
    actions = ["block", "unblock", issue_board_credentials, "export_admin_action", "delete_selected"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Machine]:
        return super().get_queryset(request).prefetch_related("plans")

    def save_model(self, request: HttpRequest, obj: Machine, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if "blocked" in form.changed_data and (change or obj.blocked):
            outbox.machines_blocked([obj], blocked=obj.blocked)
        if not change or "hours" in form.changed_data:
            # The meter is the history plus a starting point: the service keeps the two apart.
            services.set_hour_meter(obj, obj.hours)

    def get_readonly_fields(self, request: HttpRequest, obj: Machine | None = None) -> list[str]:
        # The id is what the board is configured with: set once.
        return [*super().get_readonly_fields(request, obj), *(["id"] if obj is not None else [])]

    @admin.display(description=gettext_lazy("hour meter"), ordering="hours")
    def hour_meter(self, machine: Machine) -> str:
        return format_hours(machine.hours)

    @admin.display(description=gettext_lazy("blocked"), ordering="blocked")
    def blocked_badge(self, machine: Machine) -> str:
        # A green tick read as "fine" while it meant blocked: say it, in red, and nothing when it is not.
        return badge(_("Blocked"), "error") if machine.blocked else ""

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change, **kwargs)
        if "blocked" in form.base_fields:
            # What the board does (the model's help text, "Only super users may log in", is kept until the
            # next migration of machines/models.py).
            form.base_fields["blocked"].help_text = _("The board refuses every card while the machine is blocked.")
        return form

    @admin.display(description=gettext_lazy("online"), ordering="last_seen")
    def online(self, machine: Machine) -> str:
        if machine.is_online():
            return badge(_("online"), "ok")
        return badge(_("offline"), "muted")

    @admin.display(description=gettext_lazy("maintenance"))
    def maintenance(self, machine: Machine) -> str:
        plans = list(machine.plans.all())
        if not plans:
            return "-"
        return format_html_join(" ", "{}", ((plan_badge(p, machine.hours),) for p in plans))

    @admin.display(description=gettext_lazy("firmware"), ordering="board__firmware")
    def firmware(self, machine: Machine) -> str:
        board = getattr(machine, "board", None)
        return board.firmware if board and board.firmware else "-"

    @admin.action(description=gettext_lazy("Block the selected machines"), permissions=["change"])
    def block(self, request: HttpRequest, queryset: QuerySet[Machine]) -> None:
        machines = list(queryset.filter(blocked=False))
        n = queryset.update(blocked=True)
        audit.record_many(machines, message=gettext_noop("Blocked"), changes={"blocked": ["False", "True"]})
        outbox.machines_blocked(machines, blocked=True)
        self.push_live(m.pk for m in machines)
        self.message_user(request, ngettext("%(n)d machine blocked.", "%(n)d machines blocked.", n) % {"n": n})

    @admin.action(description=gettext_lazy("Unblock the selected machines"), permissions=["change"])
    def unblock(self, request: HttpRequest, queryset: QuerySet[Machine]) -> None:
        machines = list(queryset.filter(blocked=True))
        n = queryset.update(blocked=False)
        audit.record_many(machines, message=gettext_noop("Unblocked"), changes={"blocked": ["True", "False"]})
        outbox.machines_blocked(machines, blocked=False)
        self.push_live(m.pk for m in machines)
        self.message_user(request, ngettext("%(n)d machine unblocked.", "%(n)d machines unblocked.", n) % {"n": n})

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[list, dict, set, list]:
        """Counts instead of Django's full list: a machine's history can hold a hundred thousand uses."""
        machines = list(objs)
        ids = [m.pk for m in machines]
        counts = {
            Use._meta.verbose_name_plural: Use.objects.filter(machine_id__in=ids).count(),
            Intervention._meta.verbose_name_plural: Intervention.objects.filter(machine_id__in=ids).count(),
            MaintenancePlan._meta.verbose_name_plural: MaintenancePlan.objects.filter(machine_id__in=ids).count(),
            Authorization._meta.verbose_name_plural: Authorization.objects.filter(machine_id__in=ids).count(),
        }
        summary = [str(m) for m in machines] + [f"{name}: {n}" for name, n in counts.items() if n]
        perms_needed = set() if self.has_delete_permission(request) else {self.opts.verbose_name}
        return summary, {self.opts.verbose_name_plural: len(machines), **counts}, perms_needed, []

    # --- pages ------------------------------------------------------------------------------------

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        if isinstance(response, TemplateResponse) and response.context_data and "cl" in response.context_data:
            # The chart follows the list: the machines of this page, filtered and sorted.
            changelist = response.context_data["cl"]
            response.context_data["weekly_chart"] = lambda: charts.machines_weeks_chart(
                charts.weekly_hours_per_machine(12, machines=changelist.result_list),
                title=_("Hours of use per machine on this page, last 12 weeks"),
            )
        return response

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        extra_context = extra_context or {}
        machine = self.get_object(request, object_id)
        if machine is not None:
            board = getattr(machine, "board", None)
            extra_context.update(
                machine_online=machine.is_online(),
                hour_meter=format_hours(machine.hours),
                board=board,
                can_remote=self.has_change_permission(request, machine),
                recent_uses=Use.objects.filter(machine=machine)
                .select_related("member")
                .order_by("-started_at")[:RECENT],
                recent_interventions=Intervention.objects.filter(machine=machine)
                .select_related("plan", "member")
                .order_by("-performed_at")[:RECENT],
                uses_url=changelist_url("use", machine__id__exact=machine.pk),
                interventions_url=changelist_url("intervention", machine__id__exact=machine.pk),
                weekly_chart=charts.bar_chart(
                    charts.weekly_hours(Q(machine=machine)), title=_("Hours of use per week"), period=_("Week of")
                ),
                **fault_admin.machine_context(request, machine),  # faults, check after use, refusals, sticker
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self) -> list:
        urls = [
            path(
                "<int:machine_id>/remote/<str:action>/",
                self.admin_site.admin_view(self.remote_view),
                name="machines_machine_remote",
            ),
            path(
                "<int:machine_id>/plans/<int:plan_id>/record/",
                self.admin_site.admin_view(self.record_view),
                name="machines_machine_record",
            ),
            *fault_admin.machine_urls(self),
        ]
        return urls + super().get_urls()

    def _machine_or_403(self, request: HttpRequest, machine_id: int) -> Machine:
        machine = get_object_or_404(Machine, pk=machine_id)
        if not self.has_change_permission(request, machine):
            raise PermissionDenied
        return machine

    @staticmethod
    def _back(machine: Machine) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:machines_machine_change", args=[machine.pk]))

    def remote_view(self, request: AuthenticatedHttpRequest, machine_id: int, action: str) -> HttpResponse:
        """Remote start/stop (POST with CSRF only, then a confirmation): the board acts as if a card was swiped."""
        if request.method != "POST":  # a command with side effects is never a GET (the old portal's bug)
            return HttpResponseNotAllowed(["POST"])
        machine = self._machine_or_403(request, machine_id)
        if action not in ("start", "stop"):
            raise PermissionDenied
        return confirm.remote_command(self, request, machine, cast(Literal["start", "stop"], action))  # checked

    def record_view(self, request: AuthenticatedHttpRequest, machine_id: int, plan_id: int) -> HttpResponse:
        """Record an intervention on one plan item (POST only, then a confirmation with a note)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        machine = get_object_or_404(Machine, pk=machine_id)
        # Maintainers may record interventions without the right to change the machine itself.
        if not (self.has_view_permission(request, machine) and request.user.has_perm("machines.add_intervention")):
            raise PermissionDenied
        plan = get_object_or_404(MaintenancePlan.objects.select_related("machine"), pk=plan_id, machine=machine)
        back = reverse("admin:machines_machine_change", args=[machine.pk])
        return confirm.record_maintenance(self, request, [plan], cancel_url=back) or self._back(machine)


# --- maintenance plans and authorizations ----------------------------------------------------------


@admin.register(MaintenancePlan)
class MaintenancePlanAdmin(AuditedAdmin, LiveUpdatesMixin, admin.ModelAdmin):
    formfield_overrides = URL_FIELDS
    list_display = ["description", "machine", "lcd_message", "every", "since", "instructions"]
    list_filter = [PlanDueFilter, MachineFilter]
    list_select_related = ["machine"]
    search_fields = ["description", "lcd_message", "machine__name"]
    autocomplete_fields = ["machine"]
    fields = ["machine", "description", "lcd_message", "hours_between", "instructions_url", "done_at_hours"]
    readonly_fields = ["done_at_hours"]
    actions = ["record_now"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[MaintenancePlan]:
        return super().get_queryset(request).annotate(since_hours=F("machine__hours") - F("done_at_hours"))

    @admin.display(description=gettext_lazy("every"), ordering="hours_between")
    def every(self, plan: MaintenancePlan) -> str:
        return format_hours(plan.hours_between)

    @admin.display(description=gettext_lazy("since last intervention"), ordering="since_hours")
    def since(self, plan: MaintenancePlan) -> str:
        return plan_badge(plan, plan.machine.hours)

    @admin.display(description=gettext_lazy("instructions"))
    def instructions(self, plan: MaintenancePlan) -> str:
        if not plan.instructions_url:
            return "-"
        return format_html('<a href="{}" target="_blank" rel="noopener">{}</a>', plan.instructions_url, _("open"))

    @admin.action(description=gettext_lazy("Record an intervention now"), permissions=["change"])
    def record_now(self, request: HttpRequest, queryset: QuerySet[MaintenancePlan]) -> HttpResponse | None:
        plans = list(queryset.select_related("machine"))
        hidden = [("action", "record_now"), *((admin.helpers.ACTION_CHECKBOX_NAME, p.pk) for p in plans)]
        return confirm.record_maintenance(
            self, request, plans, hidden=hidden, cancel_url=reverse("admin:machines_maintenanceplan_changelist")
        )


# --- history: uses and interventions ---------------------------------------------------------------


class HistoryAdmin(AuditedAdmin, ExcelExportMixin, admin.ModelAdmin):
    """Big tables: no full COUNT(*), newest first on an indexed column, search through the small tables."""

    paginator = CappedPaginator
    show_full_result_count = False
    list_per_page = 50
    show_change_form_export = False

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        """Search the member and machine tables (small), then filter the history on their indexed ids."""
        return history_search.search_history(queryset, search_term), False


@admin.register(Use)
class UseAdmin(LiveUpdatesMixin, HistoryAdmin):
    resource_classes = [UseResource]
    change_form_template = "admin/machines/use/change_form.html"
    list_display = ["started", "member", "machine", "ended", "duration_hm", "last_seen"]
    list_display_links = ["started"]
    list_filter = [MachineFilter, MemberFilter, UseStatusFilter, ("started_at", DateRangeFilter), "replay"]
    list_select_related = ["member", "machine"]
    search_fields = ["member__first_name", "member__last_name", "member__email", "machine__name"]
    search_help_text = gettext_lazy("Member or machine name")
    ordering = ["-started_at"]
    sortable_by = ["started"]
    autocomplete_fields = ["member", "machine"]
    actions = ["end_now", "accept_reported", "accept_observed", "export_admin_action", "delete_selected"]

    @admin.display(description=gettext_lazy("started"), ordering="started_at")
    def started(self, use: Use) -> str:
        return format_html("{} {}", short_datetime(use.started_at), replay_flag(use.replay))

    @admin.display(description=gettext_lazy("review"))
    def review(self, use: Use) -> str:
        if not use.flag:
            return badge(_("counted"), "ok")
        return format_html(
            "{}<br>{}",
            badge(use.get_flag_display(), "warn"),
            _("Reported %(reported)s, plausible at most %(limit)s: not on the hour meter until accepted.")
            % {"reported": format_seconds(use.reported_duration), "limit": format_seconds(use.plausible_max)},
        )

    @admin.display(description=gettext_lazy("ended"))
    def ended(self, use: Use) -> Any:
        return short_datetime(use.ended_at) if use.ended_at else badge(_("in use"), "info")

    @admin.display(description=gettext_lazy("duration"))
    def duration_hm(self, use: Use) -> str:
        if use.flag:
            return badge(_("to review"), "warn", title=str(use.get_flag_display()))
        if use.ended_at is None:
            return format_hours((timezone.now() - use.started_at).total_seconds() / 3600) + "…"
        return format_seconds(use.duration)

    def get_form(self, request: HttpRequest, obj: Use | None = None, change: bool = False, **kwargs: Any) -> Any:
        kwargs["form"] = UseCorrectForm if obj is not None else UseAddForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Use | None = None) -> list:
        if obj is None:
            return [(None, {"fields": ["member", "machine", "started_at", "ended_at"]})]
        return [
            (None, {"fields": ["member", "machine", "replay", "duration_hm", "last_seen", "review"]}),
            (
                gettext_lazy("Correction"),
                {
                    "fields": ["started_at", "ended_at"],
                    "description": gettext_lazy(
                        "Fix the start or the end (or end a use left open): the machine's hour meter follows."
                    ),
                },
            ),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Use | None = None) -> list[str]:
        return ["member", "machine", "replay", "duration_hm", "last_seen", "review"] if obj is not None else []

    def save_model(self, request: HttpRequest, obj: Use, form: Any, change: bool) -> None:
        data = form.cleaned_data
        if change:
            services.correct_use(obj, started_at=data["started_at"], ended_at=data["ended_at"])
        else:
            use = services.register_use(
                member=data["member"], machine=data["machine"], started_at=data["started_at"], ended_at=data["ended_at"]
            )
            obj.pk, obj.duration, obj.last_seen = use.pk, use.duration, use.last_seen
            obj._state.adding = False

    def delete_model(self, request: HttpRequest, obj: Use) -> None:
        services.delete_use(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Use]) -> None:
        for use in queryset:
            services.delete_use(use)

    @admin.action(description=gettext_lazy("Accept the duration the board reported"), permissions=["change"])
    def accept_reported(self, request: HttpRequest, queryset: QuerySet[Use]) -> None:
        self._accept(request, queryset, reported=True)

    @admin.action(description=gettext_lazy("Accept the time observed by the backend"), permissions=["change"])
    def accept_observed(self, request: HttpRequest, queryset: QuerySet[Use]) -> None:
        self._accept(request, queryset, reported=False)

    def _accept(self, request: HttpRequest, queryset: QuerySet[Use], *, reported: bool) -> None:
        accepted = 0
        for use in queryset.exclude(flag=Use.Flag.NONE).filter(ended_at__isnull=False):
            services.accept_flagged(use, reported=reported)
            self.log_change(request, use, audit.history_message(gettext_noop("Accepted a flagged duration")))
            self.push_live([use.machine_id])
            accepted += 1
        if accepted:
            self.message_user(
                request,
                ngettext(
                    "%(n)d use accepted: the hour meter counts it.",
                    "%(n)d uses accepted: the hour meter counts them.",
                    accepted,
                )
                % {"n": accepted},
                messages.SUCCESS,
            )
        else:
            self.message_user(request, _("None of the selected uses was flagged and ended."), messages.WARNING)

    @admin.action(description=gettext_lazy("End the selected uses now"), permissions=["change"])
    def end_now(self, request: HttpRequest, queryset: QuerySet[Use]) -> HttpResponse | None:
        """Confirmed first; an online board is asked to stop, so no second use can overlap (machines/confirm.py)."""
        return confirm.end_uses(self, request, queryset)


@admin.register(Intervention)
class InterventionAdmin(LiveUpdatesMixin, HistoryAdmin):
    resource_classes = [InterventionResource]
    list_display = ["when", "plan_description", "machine", "member", "meter"]
    list_display_links = ["when"]
    list_filter = [MachineFilter, MemberFilter, ("performed_at", DateRangeFilter), "replay"]
    list_select_related = ["plan__machine", "machine", "member"]
    search_fields = ["member__first_name", "member__last_name", "machine__name"]
    search_help_text = gettext_lazy("Member or machine name")
    ordering = ["-performed_at"]
    sortable_by = ["when"]
    autocomplete_fields = ["plan", "member"]
    actions = ["export_admin_action", "delete_selected"]

    @admin.display(description=gettext_lazy("when"), ordering="performed_at")
    def when(self, intervention: Intervention) -> str:
        return format_html("{} {}", short_datetime(intervention.performed_at), replay_flag(intervention.replay))

    @admin.display(description=gettext_lazy("maintenance"), ordering="plan__description")
    def plan_description(self, intervention: Intervention) -> str:
        return intervention.plan.description

    @admin.display(description=gettext_lazy("hour meter"), ordering="machine_hours")
    def meter(self, intervention: Intervention) -> str:
        return format_hours(intervention.machine_hours)

    def get_form(self, request: HttpRequest, obj: Intervention | None = None, change: bool = False, **kwargs: Any):
        if obj is None:
            kwargs["form"] = InterventionAddForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Intervention | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("plan", "member", "performed_at", "note")
        return ("plan", "machine", "member", "performed_at", "machine_hours", "replay", "note")

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        initial: dict[str, Any] = super().get_changeform_initial_data(request)  # the stubs allow only strings
        initial.setdefault("member", acting_member(request).pk)
        initial.setdefault("performed_at", timezone.now())
        return initial

    def has_change_permission(self, request: HttpRequest, obj: Intervention | None = None) -> bool:
        return False  # history: delete a wrong one and record it again

    def save_model(self, request: HttpRequest, obj: Intervention, form: Any, change: bool) -> None:
        data = form.cleaned_data
        done = services.record_manual_intervention(
            plan=data["plan"], member=data["member"], when=data["performed_at"], note=data.get("note", "")
        )
        obj.pk, obj.machine_id, obj.machine_hours = done.pk, done.machine_id, done.machine_hours
        obj._state.adding = False

    def delete_model(self, request: HttpRequest, obj: Intervention) -> None:
        services.delete_intervention(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Intervention]) -> None:
        for intervention in queryset:
            services.delete_intervention(intervention)


from . import kiosk_admin  # noqa: E402, F401  (the kiosk screens' pages register themselves)
