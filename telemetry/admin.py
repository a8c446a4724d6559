"""Boards as they last announced themselves (read-only: the bridge writes them)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from fabomatic.admin import badge

from .models import Board


@admin.register(Board)
class BoardAdmin(admin.ModelAdmin):
    list_display = ["machine", "serial", "ip_address", "firmware", "free_heap", "last_seen", "online"]
    list_select_related = ["machine"]
    list_filter = ["firmware"]
    search_fields = ["serial", "ip_address", "firmware", "machine__name"]
    readonly_fields = ("machine", "serial", "ip_address", "firmware", "free_heap", "last_seen")
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Board | None = None) -> bool:
        return False

    @admin.display(description=gettext_lazy("online"), ordering="machine__last_seen")
    def online(self, board: Board) -> str:
        return badge(_("online"), "ok") if board.machine.is_online() else badge(_("offline"), "muted")
