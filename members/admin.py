"""Portal pages for members, roles, cards and unknown cards."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, TypedDict

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.admin import UserAdmin
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery, Sum
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, gettext_noop, ngettext

from fabomatic.admin import AddAnotherMixin, ExcelExportMixin, InUseDeleteMixin, badge, format_seconds
from fabomatic.http import acting_member
from machines import charts, fault_admin, safety
from machines.models import Use
from machines.training_admin import MemberTrainingInline
from operations import audit
from operations.audited import AuditedAdmin

from . import services
from .filters import RoleFilter
from .forms import BulkAuthorizationForm, CardForm, MemberAddForm, MemberChangeForm
from .gdpr import erase_member
from .models import ANONYMOUS_ROLE, Card, Member, Role, UnknownCard, default_role, normalize_uid
from .resources import MemberResource

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

RECENT_USES = 20
UNKNOWN_CARDS_SHOWN = 20


# What the list pages' get_queryset() annotates, for the columns that show it.
class _MemberCount(TypedDict):
    n_members: int


class _LastStarted(TypedDict):
    last_started: datetime | None


# --- Roles ------------------------------------------------------------------------------------


def warn_broad_roles(request: HttpRequest) -> None:
    """Say, where roles are chosen, which roles open every machine (an import may have given it to everyone)."""
    if request.method != "GET":
        return
    broad = Role.objects.filter(authorize_all=True, reserved=False).annotate(n=Count("members"))
    for role in broad:
        messages.warning(
            request,
            ngettext(
                "The role “%(role)s” opens EVERY machine, blocked ones too, to its %(n)d member, without "
                "authorizations. Untick “authorize all” on the role unless that is intended.",
                "The role “%(role)s” opens EVERY machine, blocked ones too, to its %(n)d members, without "
                "authorizations. Untick “authorize all” on the role unless that is intended.",
                role.n,
            )
            % {"role": role.name, "n": role.n},
        )


@admin.register(Role)
class RoleAdmin(AuditedAdmin, InUseDeleteMixin, admin.ModelAdmin):
    list_display = ["name", "grants", "authorize_all", "maintenance", "backend_admin", "reserved_icon", "member_count"]
    search_fields = ["name"]
    readonly_fields = ["reserved"]

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        warn_broad_roles(request)
        return super().changelist_view(request, extra_context)

    @admin.display(description=gettext_lazy("grants"))
    def grants(self, role: Role) -> str:
        return role.grants()

    def get_queryset(self, request: HttpRequest) -> QuerySet[Role]:
        return super().get_queryset(request).annotate(n_members=Count("members", distinct=True))

    @admin.display(description=gettext_lazy("members"), ordering="n_members")
    def member_count(self, role: WithAnnotations[Role, _MemberCount]) -> str:
        url = reverse("admin:members_member_changelist") + "?" + urlencode({"role__id__exact": role.pk})
        return format_html('<a href="{}">{}</a>', url, role.n_members)

    @admin.display(description=gettext_lazy("reserved"), boolean=True, ordering="reserved")
    def reserved_icon(self, role: Role) -> bool:
        return role.reserved

    def has_change_permission(self, request: HttpRequest, obj: Role | None = None) -> bool:
        if obj is not None and obj.reserved:
            return False  # system roles are shown read-only
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Role | None = None) -> bool:
        if obj is not None and obj.reserved:
            return False
        return super().has_delete_permission(request, obj)

    def in_use_message(self, role: Role) -> str | None:
        count = 0 if role.reserved else role.members.count()  # reserved roles: no delete permission at all
        if not count:
            return None
        return ngettext(
            "The role “%(role)s” cannot be deleted: %(count)d member still has it. "
            "Give that member another role first.",
            "The role “%(role)s” cannot be deleted: %(count)d members still have it. Give them another role first.",
            count,
        ) % {"role": role, "count": count}

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Role]) -> None:
        super().delete_queryset(request, queryset.filter(reserved=False))


# --- Members ------------------------------------------------------------------------------------


class CardInline(admin.TabularInline):
    model = Card
    form = CardForm
    extra = 1
    fields = ["uid", "active", "created_at"]
    readonly_fields = ["created_at"]
    verbose_name_plural = gettext_lazy("cards (a member may have several; untick lost ones)")
    add_another = gettext_lazy("Add another card")


class StatusFilter(admin.SimpleListFilter):
    """Erased members (tombstones of GDPR erasures) are hidden unless asked for."""

    title = gettext_lazy("status")
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("enabled", _("Enabled")),
            ("disabled", _("Disabled")),
            ("erased", _("Erased")),
            ("all", _("All, erased too")),
        ]

    def choices(self, changelist: Any) -> Any:
        yield {
            "selected": self.value() is None,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": _("Current members"),
        }
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.value() == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet[Member]) -> QuerySet[Member]:
        value = self.value()
        if value == "all":
            return queryset
        if value == "erased":
            return queryset.filter(deleted_at__isnull=False)
        queryset = queryset.filter(deleted_at__isnull=True).exclude(role__name=ANONYMOUS_ROLE, is_active=False)
        if value == "enabled":
            return queryset.filter(disabled=False)
        if value == "disabled":
            return queryset.filter(disabled=True)
        return queryset


class HasCardFilter(admin.SimpleListFilter):
    title = gettext_lazy("card")
    parameter_name = "card"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", _("Has an active card")), ("no", _("No active card"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Member]) -> QuerySet[Member]:
        active = Exists(Card.objects.filter(member=OuterRef("pk"), active=True))
        if self.value() == "yes":
            return queryset.filter(active)
        if self.value() == "no":
            return queryset.exclude(active)
        return queryset


@admin.register(Member)
class MemberAdmin(AuditedAdmin, AddAnotherMixin, ExcelExportMixin, UserAdmin):
    form = MemberChangeForm
    add_form = MemberAddForm
    add_form_template = None  # our change_form.html serves both
    change_form_template = "admin/members/member/change_form.html"
    change_list_template = "admin/members/member/change_list.html"
    delete_confirmation_template = "admin/members/member/delete_confirmation.html"
    delete_selected_confirmation_template = "admin/members/member/delete_selected_confirmation.html"
    resource_classes = [MemberResource]
    show_change_form_export = False

    list_display = ["full_name", "email", "role", "card_list", "status", "is_staff", "last_use"]
    list_display_links = ["full_name"]
    list_filter = [StatusFilter, ("role", RoleFilter), HasCardFilter, "is_staff", "receive_weekly_summary"]
    list_select_related = ["role"]
    search_fields = ["first_name", "last_name", "email", "cards__uid"]
    search_help_text = gettext_lazy("Name, surname, e-mail or card UID")
    ordering = ["first_name", "last_name"]
    inlines = [CardInline, MemberTrainingInline]
    actions = ["grant_revoke_machines", "send_password_email", "export_admin_action", "delete_selected"]
    readonly_fields = ["last_login", "date_joined", "deleted_at"]
    fieldsets = [
        (None, {"fields": ["first_name", "last_name", "email", "role"]}),
        (gettext_lazy("Machines"), {"fields": ["disabled"]}),
        (gettext_lazy("E-mail"), {"fields": ["receive_weekly_summary", "training_reminders", "language"]}),
        (
            gettext_lazy("Portal access"),
            {
                "fields": ["is_staff", "password"],
                "description": gettext_lazy(
                    "Portal users log in with their e-mail address. Card holders need no password."
                ),
            },
        ),
        # No superuser flag and no list of Django permissions here: what staff may do follows their role.
        (gettext_lazy("Dates"), {"fields": ["date_joined", "last_login", "deleted_at"], "classes": ["collapse"]}),
    ]
    add_fieldsets = [
        (None, {"fields": ["first_name", "last_name", "email", "role"]}),
        (gettext_lazy("Machines"), {"fields": ["disabled"]}),
        (gettext_lazy("E-mail"), {"fields": ["receive_weekly_summary", "training_reminders", "language"]}),
        (
            gettext_lazy("Portal access"),
            {
                "fields": ["is_staff"],
                "description": gettext_lazy(
                    "A new member has no password. Staff set theirs from the login page "
                    "(“Forgotten your password?”) or you set one on their page after saving."
                ),
            },
        ),
    ]

    # --- list -----------------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[Member]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                # Total hours are on the member page and in the export: summing every member's history for
                # a list page costs half a second at a million uses; the latest start is one index probe.
                last_started=Subquery(
                    Use.objects.filter(member=OuterRef("pk")).order_by("-started_at").values("started_at")[:1]
                ),
            )
            .prefetch_related("cards")
        )

    @admin.display(description=gettext_lazy("name"), ordering="first_name")
    def full_name(self, member: Member) -> str:
        return str(member)

    @admin.display(description=gettext_lazy("cards"))
    def card_list(self, member: Member) -> str:
        cards = sorted(member.cards.all(), key=lambda c: (not c.active, c.uid))
        return format_html_join(
            " ",
            '<code class="fab-uid{}" title="{}">{}</code>',
            ((" fab-muted" if not c.active else "", _("active") if c.active else _("inactive"), c.uid) for c in cards),
        )

    @admin.display(description=gettext_lazy("status"), ordering="disabled")
    def status(self, member: Member) -> str:
        if member.deleted_at:
            return badge(_("erased"), "muted")
        if member.disabled:
            return badge(_("disabled"), "error")
        return badge(_("enabled"), "ok")

    @admin.display(description=gettext_lazy("last use"), ordering="last_started")
    def last_use(self, member: WithAnnotations[Member, _LastStarted]) -> Any:
        return member.last_started or "-"

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        extra_context = extra_context or {}
        extra_context["unknown_cards"] = self.unknown_cards()
        warn_broad_roles(request)
        return super().changelist_view(request, extra_context)

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        warn_broad_roles(request)
        return super().add_view(request, form_url, extra_context)

    @staticmethod
    def unknown_cards() -> list[dict[str, Any]]:
        """The latest unknown UIDs, newest first, each with the link that registers it as a new member's card."""
        add_url = reverse("admin:members_member_add")
        return [
            dict(row, register_url=f"{add_url}?{urlencode({'card': row['uid']})}")
            for row in services.unregistered_cards(limit=UNKNOWN_CARDS_SHOWN)
        ]

    # --- add / change -------------------------------------------------------------------------

    def get_formset_kwargs(self, request: HttpRequest, obj: Member, inline: Any, prefix: str) -> dict[str, Any]:
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        uid = normalize_uid(request.GET.get("card", ""))
        if isinstance(inline, CardInline) and request.method == "GET" and obj.pk is None and uid:
            kwargs["initial"] = [{"uid": uid, "active": True}]
        return kwargs

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        initial: dict[str, Any] = super().get_changeform_initial_data(request)  # the stubs allow only strings
        if "role" not in initial:  # most new members are plain card holders: least privilege, or no preselection
            default = default_role()
            if default is not None:
                initial["role"] = default.pk
        return initial

    def get_readonly_fields(self, request: HttpRequest, obj: Member | None = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += ["is_superuser", "groups", "user_permissions"]
        return fields

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        cleared = services.clear_unknown_cards(uids=form.instance.cards.values_list("uid", flat=True))
        if cleared:
            self.message_user(
                request,
                ngettext(
                    "%(count)d unknown-card swipe of this card was cleared.",
                    "%(count)d unknown-card swipes of this card were cleared.",
                    cleared,
                )
                % {"count": cleared},
            )

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        extra_context = extra_context or {}
        member = self.get_object(request, object_id)
        if member is not None:
            uses = Use.objects.filter(member=member)
            totals = uses.order_by().aggregate(seconds=Sum("duration"), count=Count("id"))
            extra_context.update(
                recent_uses=uses.select_related("machine").order_by("-started_at")[:RECENT_USES],
                total_seconds=totals["seconds"] or 0,
                total_hours=format_seconds(totals["seconds"] or 0),
                use_count=totals["count"],
                uses_url=reverse("admin:machines_use_changelist") + "?" + urlencode({"member__id__exact": member.pk}),
                interventions_url=reverse("admin:machines_intervention_changelist")
                + "?"
                + urlencode({"member__id__exact": member.pk}),
                usage_chart=charts.bar_chart(
                    charts.monthly_hours(Q(member=member)), title=_("Hours per month"), period=_("Month")
                ),
                **fault_admin.member_context(member),  # the latest refused swipes
            )
        return super().change_view(request, object_id, form_url, extra_context)

    # --- erasure --------------------------------------------------------------------------------

    def has_delete_permission(self, request: HttpRequest, obj: Member | None = None) -> bool:
        if obj is not None and not services.may_erase(obj, by=acting_member(request)):
            return False
        return super().has_delete_permission(request, obj)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[list, dict, set, list]:
        """Nothing is cascaded: the members are anonymised, their history stays (see delete_model)."""
        members = [m for m in objs if m.deleted_at is None]
        perms_needed = set() if self.has_delete_permission(request) else {self.opts.verbose_name}
        return [str(m) for m in members], {self.opts.verbose_name_plural: len(members)}, perms_needed, []

    def delete_model(self, request: HttpRequest, obj: Member) -> None:
        erase_member(obj)  # deleting a member in the portal is a GDPR erasure: history stays, anonymised

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Member]) -> None:
        services.erase_members(queryset, by=acting_member(request))

    # --- actions --------------------------------------------------------------------------------

    @admin.action(description=gettext_lazy("Grant/revoke machines…"), permissions=["change"])
    def grant_revoke_machines(self, request: HttpRequest, queryset: QuerySet[Member]) -> HttpResponse | None:
        members = list(queryset.filter(deleted_at__isnull=True))
        staff = acting_member(request)
        # Only the machines the staff member trains are offered, and accepted (a forged POST is an invalid choice).
        form = BulkAuthorizationForm(request.POST if "apply" in request.POST else None, trainer=staff)
        if form.is_bound and form.is_valid():
            machines = list(form.cleaned_data["machines"])
            names = ", ".join(m.name for m in machines)
            if form.cleaned_data["operation"] == BulkAuthorizationForm.GRANT:
                created = services.grant_authorizations(
                    members=members, machines=machines, by=staff, rule=form.training_rule()
                )
                audit.record_many(
                    members,
                    message=gettext_noop("Granted machines: %(machines)s"),
                    params={"machines": names},
                    changes={"machines": ["", names]},
                )
                text = _("Access to %(machines)d machine(s) granted to %(members)d member(s).") % {
                    "machines": len(machines),
                    "members": len(members),
                }
                if created < len(machines) * len(members):
                    text += " " + _("Existing authorizations were kept as they were (renew them from the list).")
            else:
                deleted = services.revoke_authorizations(members=members, machines=machines)
                audit.record_many(
                    members,
                    message=gettext_noop("Revoked machines: %(machines)s"),
                    params={"machines": names},
                    changes={"machines": [names, ""]},
                )
                text = _("%(count)d authorization(s) revoked.") % {"count": deleted}
            self.message_user(request, text, messages.SUCCESS)
            return None
        if not safety.trainable_machines(staff).exists():
            self.message_user(request, _("You are not a trainer of any machine."), messages.WARNING)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": _("Grant or revoke machines"),
            "opts": self.opts,
            "members": members,
            "form": form,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media + form.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/members/member/bulk_authorization.html", context)

    @admin.action(description=gettext_lazy("Send a password e-mail (portal users)"), permissions=["change"])
    def send_password_email(self, request: HttpRequest, queryset: QuerySet[Member]) -> None:
        sent = services.send_password_emails(queryset)  # links point to PUBLIC_URL, never to the request's host
        self.message_user(
            request,
            ngettext(
                "A password e-mail was sent to %(count)d portal user.",
                "A password e-mail was sent to %(count)d portal users.",
                sent,
            )
            % {"count": sent},
            messages.SUCCESS if sent else messages.WARNING,
        )


# --- Cards ------------------------------------------------------------------------------------


@admin.register(Card)
class CardAdmin(AuditedAdmin, admin.ModelAdmin):
    form = CardForm
    list_display = ["uid", "member", "active", "created_at"]
    list_filter = ["active"]
    list_select_related = ["member"]
    search_fields = ["uid", "member__first_name", "member__last_name", "member__email"]
    autocomplete_fields = ["member"]
    fields = ["uid", "member", "active", "created_at"]

    def get_form(self, request: HttpRequest, obj: Card | None = None, change: bool = False, **kwargs: Any) -> Any:
        kwargs["fields"] = ["uid", "member", "active", "created_at"]
        return super().get_form(request, obj, change, **kwargs)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        return super().get_search_results(request, queryset, normalize_uid(search_term) or search_term)

    def save_model(self, request: HttpRequest, obj: Card, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        services.clear_unknown_cards(uids=[obj.uid])

    # A card's entries are written on its member's history too, as the member page's card rows are: the member's
    # history shows them, and erasing the member finds the UID there (members/gdpr.py) after the card is gone.
    def _log_on_member(self, request: HttpRequest, card: Card, action: str, fields: list[str] | None = None) -> None:
        detail: dict[str, Any] = {"name": str(Card._meta.verbose_name), "object": card.uid}
        if action == "changed":
            detail["fields"] = fields or []
        LogEntry.objects.log_actions(
            acting_member(request).pk, [card.member], CHANGE, change_message=[{action: detail}], single_object=True
        )

    def log_addition(self, request: HttpRequest, obj: Card, message: Any) -> LogEntry:
        entry = super().log_addition(request, obj, message)
        self._log_on_member(request, obj, "added")
        return entry

    def log_change(self, request: HttpRequest, obj: Card, message: Any) -> LogEntry:
        entry = super().log_change(request, obj, message)
        changed = [m["changed"] for m in message if isinstance(m, dict) and "changed" in m] if message else []
        self._log_on_member(request, obj, "changed", [f for c in changed for f in c.get("fields", [])])
        return entry

    def log_deletions(self, request: HttpRequest, queryset: Any) -> Any:
        entries = super().log_deletions(request, queryset)
        for card in queryset:
            self._log_on_member(request, card, "deleted")
        return entries


@admin.register(UnknownCard)
class UnknownCardAdmin(admin.ModelAdmin):
    """Swipes of cards that matched no member; registered from the members page."""

    list_display = ["uid", "machine", "seen_at", "count", "first_seen", "register"]
    list_filter = ["machine"]
    list_select_related = ["machine"]
    search_fields = ["uid"]
    date_hierarchy = None
    ordering = ["-seen_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: UnknownCard | None = None) -> bool:
        return False

    @admin.display(description=gettext_lazy("register"))
    def register(self, card: UnknownCard) -> str:
        url = reverse("admin:members_member_add") + "?" + urlencode({"card": card.uid})
        return format_html('<a class="fab-button" href="{}">{}</a>', url, _("Register as new member"))
