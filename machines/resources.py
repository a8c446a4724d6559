"""Excel exports of machines and their history: names instead of ids, local times, hours as numbers."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.utils.translation import gettext_lazy as _
from import_export import fields, resources, widgets

from .models import Intervention, Machine, Use


def _hours(seconds: int | None) -> float | None:
    return None if seconds is None else round(seconds / 3600, 3)


class UseResource(resources.ModelResource):
    id = fields.Field(attribute="id", column_name=_("id"), widget=widgets.IntegerWidget())
    machine = fields.Field(attribute="machine__name", column_name=_("machine"))
    machine_id = fields.Field(attribute="machine_id", column_name=_("board id"), widget=widgets.IntegerWidget())
    member = fields.Field(column_name=_("member"))
    email = fields.Field(attribute="member__email", column_name=_("e-mail"))
    started_at = fields.Field(attribute="started_at", column_name=_("started"), widget=widgets.DateTimeWidget())
    ended_at = fields.Field(attribute="ended_at", column_name=_("ended"), widget=widgets.DateTimeWidget())
    hours = fields.Field(column_name=_("hours"))
    replay = fields.Field(attribute="replay", column_name=_("replayed"), widget=widgets.BooleanWidget())

    class Meta:
        model = Use
        fields = ["id", "machine", "machine_id", "member", "email", "started_at", "ended_at", "hours", "replay"]
        export_order = fields

    def filter_export(self, queryset: QuerySet[Use], **kwargs: Any) -> QuerySet[Use]:
        return queryset.select_related("member", "machine")

    def dehydrate_member(self, use: Use) -> str:
        return str(use.member)

    def dehydrate_hours(self, use: Use) -> float | None:
        return _hours(use.duration)


class InterventionResource(resources.ModelResource):
    id = fields.Field(attribute="id", column_name=_("id"), widget=widgets.IntegerWidget())
    performed_at = fields.Field(attribute="performed_at", column_name=_("when"), widget=widgets.DateTimeWidget())
    machine = fields.Field(attribute="machine__name", column_name=_("machine"))
    maintenance = fields.Field(attribute="plan__description", column_name=_("maintenance"))
    member = fields.Field(column_name=_("member"))
    machine_hours = fields.Field(
        attribute="machine_hours", column_name=_("hour meter"), widget=widgets.FloatWidget(coerce_to_string=False)
    )
    replay = fields.Field(attribute="replay", column_name=_("replayed"), widget=widgets.BooleanWidget())

    class Meta:
        model = Intervention
        fields = ["id", "performed_at", "machine", "maintenance", "member", "machine_hours", "replay"]
        export_order = fields

    def filter_export(self, queryset: QuerySet[Intervention], **kwargs: Any) -> QuerySet[Intervention]:
        return queryset.select_related("member", "machine", "plan")

    def dehydrate_member(self, intervention: Intervention) -> str:
        return str(intervention.member)


class MachineResource(resources.ModelResource):
    id = fields.Field(attribute="id", column_name=_("board id"), widget=widgets.IntegerWidget())
    name = fields.Field(attribute="name", column_name=_("name"))
    type = fields.Field(attribute="type__name", column_name=_("type"))
    hours = fields.Field(attribute="hours", column_name=_("hour meter"), widget=widgets.FloatWidget())
    blocked = fields.Field(attribute="blocked", column_name=_("blocked"), widget=widgets.BooleanWidget())
    last_seen = fields.Field(attribute="last_seen", column_name=_("last seen"), widget=widgets.DateTimeWidget())
    firmware = fields.Field(column_name=_("firmware"))
    maintenance_due = fields.Field(column_name=_("maintenance due"))

    class Meta:
        model = Machine
        fields = ["id", "name", "type", "hours", "blocked", "last_seen", "firmware", "maintenance_due"]
        export_order = fields

    def filter_export(self, queryset: QuerySet[Machine], **kwargs: Any) -> QuerySet[Machine]:
        return queryset.select_related("type", "board").prefetch_related("plans")

    def dehydrate_firmware(self, machine: Machine) -> str:
        board = getattr(machine, "board", None)
        return board.firmware if board else ""

    def dehydrate_maintenance_due(self, machine: Machine) -> str:
        return ", ".join(p.description for p in machine.plans.all() if p.is_due(machine.hours))
