"""Portal pages of the training lifecycle: authorizations with who trained whom and when they lapse, granted only by
trainers of the machine (portal administrators for all), expiring and expired ones listed and renewed in bulk.

The rules are ``machines.safety``'s; this module parses requests, restricts choices to what the staff member may
train, confirms the bulk renewal and records it in the audit trail.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.db.models import F, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, gettext_noop, ngettext

from fabomatic.admin import badge, short_datetime
from fabomatic.http import acting_member
from members.filters import RoleFilter
from members.models import Member
from operations import audit
from operations.audited import AuditedAdmin

from . import confirm, safety, training
from .filters import MachineFilter, SelectFilter
from .models import Authorization, Machine
from .training_forms import (
    TRAINERS_HELP,
    AuthorizationGrantForm,
    MachineChoiceField,
    TrainerInlineFormSet,
    for_trainer,
    trainers_field,
)


def expires_html(authorization: Authorization) -> str:
    """The "expires" cell: the date (or "never", or "after N days unused (on …)") and a badge when it is due."""
    state = training.status(authorization)
    text = training.expiry_text(authorization)
    if state == "expired":
        return format_html("{} {}", text, badge(_("expired"), "error"))
    if state == "soon":
        return format_html("{} {}", text, badge(_("expiring soon"), "warn"))
    return text


def trained_by_text(authorization: Authorization) -> str:
    return str(authorization.trained_by) if authorization.trained_by_id else "-"


# --- Trainers of machines and types ---------------------------------------------------------------


class TrainersFieldMixin:
    """The ``trainers`` of a machine or a type: ticked among staff, and only by portal administrators (a trainer
    must not make themselves one of another machine)."""

    trainers_help: Any = TRAINERS_HELP

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        field = super().formfield_for_manytomany(db_field, request, **kwargs)  # type: ignore[misc]
        if db_field.name == "trainers" and field is not None:
            return trainers_field(field, self.trainers_help)
        return field

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))  # type: ignore[misc]
        if not safety.is_portal_admin(acting_member(request)):
            fields.append("trainers")
        return fields


# --- Authorizations on the member's and the machine's page -----------------------------------------


class TrainingInlineMixin:
    """Granted rows as text (revoke = delete, grant = add a row, renew from the list); new rows go through
    ``safety.grant`` with the staff member as trainer and only for machines they train."""

    model = Authorization
    extra = 0
    add_another = gettext_lazy("Add another authorization")

    def get_formset(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        trainer = acting_member(request)
        kwargs["form"] = for_trainer(AuthorizationGrantForm, trainer)
        formset = super().get_formset(request, obj, **kwargs)  # type: ignore[misc]
        return type(formset.__name__, (formset,), {"trainer": trainer})

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # An autocomplete widget per granted row cost two queries each, 90 for a machine 45 members may use.
        return False

    @admin.display(description=gettext_lazy("trained by"))
    def trained_by_name(self, authorization: Authorization) -> str:
        return trained_by_text(authorization) if authorization.pk else "-"

    @admin.display(description=gettext_lazy("trained"))
    def trained_on(self, authorization: Authorization) -> str:
        return short_datetime(authorization.granted_at) if authorization.pk else "-"

    # Shown in place of the new-row fields on granted rows (has_change_permission is False).
    @admin.display(description=gettext_lazy("expires"))
    def rule(self, authorization: Authorization) -> str:
        return expires_html(authorization) if authorization.pk else "-"

    @admin.display(description=gettext_lazy("days"))
    def days(self, authorization: Authorization) -> str:
        return ""

    @admin.display(description=gettext_lazy("on"))
    def on_date(self, authorization: Authorization) -> str:
        return ""


class MemberTrainingInline(TrainingInlineMixin, admin.TabularInline):
    """The member page's "authorized machines": a drop-down of the machines the staff member trains."""

    form = AuthorizationGrantForm
    formset = TrainerInlineFormSet

    fk_name = "member"  # trained_by also points to a member
    fields = ["machine", "trained_by_name", "trained_on", "rule", "days", "on_date"]
    readonly_fields = ["trained_by_name", "trained_on"]
    verbose_name_plural = gettext_lazy("authorized machines")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Authorization]:
        return super().get_queryset(request).select_related("machine", "member", "trained_by")


class MachineTrainingInline(TrainingInlineMixin, admin.TabularInline):
    """The machine page's "authorized members": only a trainer of the machine adds or removes rows."""

    form = AuthorizationGrantForm
    formset = TrainerInlineFormSet

    fk_name = "machine"
    fields = ["member", "trained_by_name", "trained_on", "rule", "days", "on_date"]
    readonly_fields = ["trained_by_name", "trained_on"]
    autocomplete_fields = ["member"]
    verbose_name_plural = gettext_lazy("authorized members")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Authorization]:
        return super().get_queryset(request).select_related("member", "machine", "trained_by")

    def _trains(self, request: HttpRequest, machine: Machine | None) -> bool:
        return machine is None or safety.may_train(acting_member(request), machine)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_add_permission(request, obj) and self._trains(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self._trains(request, obj)


# --- The authorizations list: expiring, expired, renewal -------------------------------------------


class TrainingStatusFilter(admin.SimpleListFilter):
    title = gettext_lazy("training")
    parameter_name = "training"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("expired", _("Expired")),
            ("soon", _("Expiring within %(days)d days") % {"days": training.SOON_DAYS}),
            ("valid", _("Valid")),
            ("never", _("Never expires")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Authorization]) -> QuerySet[Authorization]:
        now = timezone.now()
        value = self.value()
        if value == "expired":
            return queryset.filter(expires_at__lte=now)
        if value == "soon":
            return queryset.filter(expires_at__gt=now, expires_at__lte=now + timedelta(days=training.SOON_DAYS))
        if value == "valid":
            return queryset.filter(safety.valid_condition(now))
        if value == "never":
            return queryset.filter(expires_at__isnull=True)
        return queryset


class TrainerFilter(SelectFilter):
    title = gettext_lazy("trained by")
    parameter_name = "trained_by__id__exact"
    field = "trained_by"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        trainers = Member.objects.filter(
            Q(pk__in=Authorization.objects.values("trained_by")) | Q(is_staff=True, deleted_at__isnull=True)
        ).order_by("first_name", "last_name")
        return [(str(m.pk), str(m)) for m in trainers]


class MemberSelectFilter(SelectFilter):
    """From the member page's "renew" link: that member's authorizations (the drop-down lists only them)."""

    title = gettext_lazy("member")
    parameter_name = "member__id__exact"
    field = "member"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        value = self.value()
        if not (value and value.isdigit()):
            return []
        return [(str(m.pk), str(m)) for m in Member.objects.filter(pk=int(value))]


@admin.register(Authorization)
class AuthorizationAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ["member", "machine", "trained_by", "granted_at", "expires"]
    list_filter = [TrainingStatusFilter, MachineFilter, TrainerFilter, MemberSelectFilter, ("member__role", RoleFilter)]
    list_select_related = ["member", "machine", "trained_by"]
    search_fields = ["member__first_name", "member__last_name", "member__email", "machine__name"]
    search_help_text = gettext_lazy("Member or machine name")
    autocomplete_fields = ["member"]
    form = AuthorizationGrantForm
    actions = ["renew_selected", "delete_selected"]
    # The soonest to lapse first, those that never do last (Django takes expressions; the stubs say strings).
    ordering = [F("expires_at").asc(nulls_last=True), "member__first_name"]  # type: ignore[list-item]

    @admin.display(description=gettext_lazy("expires"), ordering="expires_at")
    def expires(self, authorization: Authorization) -> str:
        return expires_html(authorization)

    def get_fields(self, request: HttpRequest, obj: Authorization | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("member", "machine", "rule", "days", "on_date")
        return ("member", "machine", "trained_by", "granted_at", "expires", "last_used_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Authorization | None = None) -> list[str]:
        return [] if obj is None else ["member", "machine", "trained_by", "granted_at", "expires", "last_used_at"]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        kwargs["form"] = for_trainer(AuthorizationGrantForm, acting_member(request))
        form = super().get_form(request, obj, change, **kwargs)
        if obj is None:
            form.base_fields["machine"].help_text = _("Only the machines you are a trainer of.")
        return form

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "machine":
            kwargs["form_class"] = MachineChoiceField
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_change_permission(self, request: HttpRequest, obj: Authorization | None = None) -> bool:
        return False  # renewed (the action) or revoked and granted again, never edited

    def has_delete_permission(self, request: HttpRequest, obj: Authorization | None = None) -> bool:
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or safety.may_train(acting_member(request), obj.machine))

    def has_renew_permission(self, request: HttpRequest) -> bool:
        return self.has_add_permission(request)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Authorization]) -> None:
        super().delete_queryset(request, queryset.filter(machine__in=safety.trainable_machines(acting_member(request))))

    @admin.action(description=gettext_lazy("Renew the selected trainings…"), permissions=["renew"])
    def renew_selected(self, request: HttpRequest, queryset: QuerySet[Authorization]) -> HttpResponse | None:
        return renew(self, request, queryset)


def renew(
    model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Authorization]
) -> HttpResponse | None:
    """Confirm, then train again now (each keeps its rule) with the staff member as trainer; only machines they
    train, each renewal in the audit trail and the object's history."""
    staff = acting_member(request)
    selected = queryset.select_related("member", "machine", "trained_by").order_by("expires_at", "pk")
    mine = list(selected.filter(machine__in=safety.trainable_machines(staff)))
    others = selected.count() - len(mine)
    if others:
        model_admin.message_user(
            request,
            ngettext(
                "%(n)d authorization is of a machine you are not a trainer of: it is left as it is.",
                "%(n)d authorizations are of machines you are not a trainer of: they are left as they are.",
                others,
            )
            % {"n": others},
            messages.WARNING,
        )
    if not mine:
        return None
    if not confirm.confirmed(request):
        return confirm.confirm_page(
            request,
            model_admin,
            title=_("Renew trainings"),
            question=_("Record that these members were trained again now, by you?"),
            lines=[
                _("%(member)s on %(machine)s (expires: %(expires)s): renewed with the same rule.")
                % {"member": a.member, "machine": a.machine, "expires": training.expiry_text(a)}
                for a in mine
            ],
            confirm_label=_("Yes, renew them"),
            cancel_url=reverse("admin:machines_authorization_changelist"),
            hidden=[("action", "renew_selected"), *((admin.helpers.ACTION_CHECKBOX_NAME, a.pk) for a in mine)],
        )
    before = {a.pk: training.expiry_text(a) for a in mine}
    count = safety.renew(Authorization.objects.filter(pk__in=before), by=staff)
    for authorization in Authorization.objects.filter(pk__in=before).select_related("member", "machine"):
        message = _("Training renewed by %(trainer)s.") % {"trainer": staff}
        model_admin.log_change(request, authorization, message)
        changes = {"expires": [before[authorization.pk], training.expiry_text(authorization)]}
        audit.record(
            authorization,
            message=gettext_noop("Training renewed by %(trainer)s."),
            params={"trainer": str(staff)},
            changes=changes,
            actor=staff,
            request=request,
        )
    model_admin.message_user(
        request,
        ngettext("%(n)d training renewed.", "%(n)d trainings renewed.", count) % {"n": count},
        messages.SUCCESS,
    )
    return None
