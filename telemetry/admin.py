"""Boards as they last announced themselves (read-only: the bridge writes them), and the firmware rollouts' record."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from fabomatic.admin import badge

from . import health
from .models import Board, OtaPush, Rollout


@admin.register(Board)
class BoardAdmin(admin.ModelAdmin):
    list_display = [
        "machine",
        "serial",
        "ip_address",
        "environment",
        "version",
        "drift",
        "heap",
        "last_seen",
        "latency",
        "online",
    ]
    list_select_related = ["machine"]
    list_filter = ["firmware"]
    search_fields = ["serial", "ip_address", "firmware", "machine__name"]
    readonly_fields = ("machine", "serial", "ip_address", "firmware", "free_heap", "last_seen")
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Board | None = None) -> bool:
        return False

    def get_changelist_instance(self, request: HttpRequest) -> ChangeList:
        """The page's boards with their drift and heap trend, read once for the page (telemetry/health.py)."""
        changelist = super().get_changelist_instance(request)
        changelist.result_list = list(changelist.result_list)
        health.annotate(changelist.result_list)
        health.annotate_latency(changelist.result_list)
        return changelist

    @admin.display(description=gettext_lazy("environment"))
    def environment(self, board: Board) -> str:
        return getattr(board, "environment", "")

    @admin.display(description=gettext_lazy("version"), ordering="firmware")
    def version(self, board: Board) -> str:
        return getattr(board, "version", board.firmware)

    @admin.display(description=gettext_lazy("firmware drift"))
    def drift(self, board: Board) -> str:
        newer = getattr(board, "behind", "")
        if newer:
            return badge(_("behind: %(version)s available") % {"version": newer}, "warn")
        return badge(_("up to date"), "ok") if getattr(board, "environment", "") else ""

    @admin.display(description=gettext_lazy("free heap, 48 h"), ordering="free_heap")
    def heap(self, board: Board) -> str:
        now = f"{board.free_heap:,}" if board.free_heap is not None else "?"
        trend = getattr(board, "heap_trend", "")
        low = getattr(board, "heap_low", None)
        title = _("Hourly minima of the last 48 hours; lowest %(low)s bytes") % {"low": f"{low:,}"} if low else ""
        return format_html('{} <span class="fab-spark" title="{}">{}</span>', now, title, trend)

    @admin.display(description=gettext_lazy("reply latency"))
    def latency(self, board: Board) -> str:
        figures = getattr(board, "latency", None)
        return f"{figures[0]} / {figures[1]} ms" if figures else "-"

    @admin.display(description=gettext_lazy("online"), ordering="machine__last_seen")
    def online(self, board: Board) -> str:
        return badge(_("online"), "ok") if board.machine.is_online() else badge(_("offline"), "muted")


class OtaPushInline(admin.TabularInline):
    model = OtaPush
    fields = ("position", "machine", "state", "reason", "detail", "from_version", "started_at", "finished_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Rollout)
class RolloutAdmin(admin.ModelAdmin):
    """The record of the rollouts (started from the Firmware page, never edited here)."""

    list_display = ["image", "state", "started_by", "started_at", "finished_at"]
    list_filter = ["state"]
    list_select_related = ["image", "started_by"]
    readonly_fields = ("image", "state", "started_by", "started_at", "finished_at")
    fields = readonly_fields
    inlines = [OtaPushInline]

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).defer("image__data")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Rollout | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Rollout | None = None) -> bool:
        return False
