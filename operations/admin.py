"""The audit trail in the portal: one searchable, filterable, exportable list (portal administrators only: it holds
personal data). The "Audit log" page of each object is ``operations.audited.AuditedAdmin``."""

from __future__ import annotations

from typing import Any

from auditlog.admin import LogEntryAdmin
from auditlog.filters import ResourceTypeFilter
from auditlog.models import LogEntry
from django.contrib import admin
from django.db.models import QuerySet
from django.utils.translation import gettext_lazy as _
from import_export import fields, resources, widgets

from fabomatic.admin import DateRangeFilter, ExcelExportMixin
from operations import audit


def title_of(entry: LogEntry) -> str:
    """The entry's object; for one about no single object titled by its message (an export, an import), the message
    in the reader's language."""
    if not entry.object_pk and entry.object_repr == audit.english(entry):
        return audit.message_of(entry)
    return entry.object_repr


class AuditResource(resources.ModelResource):
    """The Excel export: who, when, what, before/after."""

    timestamp = fields.Field(attribute="timestamp", column_name=_("when"), widget=widgets.DateTimeWidget())
    actor = fields.Field(column_name=_("who"))
    action = fields.Field(column_name=_("action"))
    object_type = fields.Field(attribute="content_type__model", column_name=_("type"))
    object_pk = fields.Field(attribute="object_pk", column_name=_("object id"))
    object_repr = fields.Field(attribute="object_repr", column_name=_("object"))
    message = fields.Field(column_name=_("message"))
    changes = fields.Field(column_name=_("changes (before → after)"))
    remote_addr = fields.Field(attribute="remote_addr", column_name=_("client address"))

    class Meta:
        model = LogEntry
        fields = [
            "timestamp",
            "actor",
            "action",
            "object_type",
            "object_pk",
            "object_repr",
            "message",
            "changes",
            "remote_addr",
        ]
        export_order = fields

    def filter_export(self, queryset: QuerySet[LogEntry], **kwargs: Any) -> QuerySet[LogEntry]:
        return queryset.select_related("actor", "content_type")

    def dehydrate_actor(self, entry: LogEntry) -> str:
        return str(entry.actor) if entry.actor_id else ""

    def dehydrate_action(self, entry: LogEntry) -> str:
        return str(entry.get_action_display())

    def dehydrate_message(self, entry: LogEntry) -> str:
        return audit.message_of(entry)

    def dehydrate_object_repr(self, entry: LogEntry) -> str:
        return title_of(entry)

    def dehydrate_changes(self, entry: LogEntry) -> str:
        return "; ".join(
            f"{name}: {value[0]} → {value[1]}" if isinstance(value, list) and len(value) == 2 else f"{name}: {value}"
            for name, value in (entry.changes or {}).items()
        )


admin.site.unregister(LogEntry)


@admin.register(LogEntry)
class AuditLogAdmin(ExcelExportMixin, LogEntryAdmin):
    resource_classes = [AuditResource]
    list_display = ["created", "resource_url", "action", "message", "msg_short", "user_url"]
    list_filter = ["action", ResourceTypeFilter, ("timestamp", DateRangeFilter)]
    search_fields = [
        "object_repr",
        "changes",
        "additional_data",
        "actor__first_name",
        "actor__last_name",
        "actor__email",
    ]
    search_help_text = _("Object, change, message or who (name, e-mail)")
    show_full_result_count = False
    actions = ["export_admin_action"]
    fieldsets = [
        (None, {"fields": ["created", "user_url", "resource_url", "message"]}),
        (_("Changes"), {"fields": ["action", "msg"]}),
    ]
    readonly_fields = ["created", "resource_url", "action", "user_url", "msg", "message"]

    @admin.display(description=_("message"))
    def message(self, entry: LogEntry) -> str:
        return audit.message_of(entry)

    @admin.display(description=_("Resource"))
    def resource_url(self, entry: LogEntry) -> str:
        if not entry.object_pk:  # an export, an import: titled by its message, in the reader's language
            return title_of(entry)
        return super().resource_url(entry)
