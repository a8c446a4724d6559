"""Excel export of members (a data-access request is answered with this and the uses export).

Readable columns only: names instead of ids, local times. Never the password hash, superuser flag or permissions.
"""

from __future__ import annotations

from typing import Any

from django.db.models import IntegerField, OuterRef, QuerySet, Subquery, Sum
from django.utils.translation import gettext_lazy as _
from import_export import fields, resources, widgets

from machines.models import Use

from .models import Member


class MemberResource(resources.ModelResource):
    id = fields.Field(attribute="id", column_name=_("id"), widget=widgets.IntegerWidget())
    first_name = fields.Field(attribute="first_name", column_name=_("name"))
    last_name = fields.Field(attribute="last_name", column_name=_("surname"))
    email = fields.Field(attribute="email", column_name=_("e-mail"))
    role = fields.Field(attribute="role__name", column_name=_("role"))
    disabled = fields.Field(attribute="disabled", column_name=_("disabled"), widget=widgets.BooleanWidget())
    weekly_summary = fields.Field(
        attribute="receive_weekly_summary", column_name=_("weekly summary"), widget=widgets.BooleanWidget()
    )
    portal_access = fields.Field(attribute="is_staff", column_name=_("portal access"), widget=widgets.BooleanWidget())
    date_joined = fields.Field(attribute="date_joined", column_name=_("joined"), widget=widgets.DateTimeWidget())
    last_login = fields.Field(attribute="last_login", column_name=_("last login"), widget=widgets.DateTimeWidget())
    cards = fields.Field(column_name=_("cards"))
    machines = fields.Field(column_name=_("authorized machines"))
    hours = fields.Field(column_name=_("hours of use"))

    class Meta:
        model = Member
        fields = [
            "id",
            "first_name",
            "last_name",
            "email",
            "role",
            "disabled",
            "weekly_summary",
            "portal_access",
            "date_joined",
            "last_login",
            "cards",
            "machines",
            "hours",
        ]
        export_order = fields

    def filter_export(self, queryset: QuerySet[Member], **kwargs: Any) -> QuerySet[Member]:
        return (
            queryset.select_related("role")
            .prefetch_related("cards", "authorizations__machine")
            .annotate(
                export_seconds=Subquery(
                    Use.objects.filter(member=OuterRef("pk"))
                    .order_by()
                    .values("member")
                    .annotate(total=Sum("duration"))
                    .values("total"),
                    output_field=IntegerField(),
                )
            )
        )

    def dehydrate_cards(self, member: Member) -> str:
        return ", ".join(c.uid if c.active else f"{c.uid} ({_('inactive')})" for c in member.cards.all())

    def dehydrate_machines(self, member: Member) -> str:
        return ", ".join(sorted(a.machine.name for a in member.authorizations.all()))

    def dehydrate_hours(self, member: Member) -> float:
        return round((getattr(member, "export_seconds", None) or 0) / 3600, 2)
