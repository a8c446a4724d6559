"""Keyset (cursor) pagination: each page is one indexed range read, whatever the length of the history.

The uses are walked along the ``use_started`` index (``-started_at, -id``), or ``use_machine_recent`` /
``use_member_recent`` when filtered by machine or member; no page ever counts the table (no ``COUNT(*)``) or skips
rows with an OFFSET over the history. ``next`` and ``previous`` are opaque links."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request


class KeysetPagination(CursorPagination):
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000
    ordering: str | tuple[str, ...] = "id"

    def get_page_size(self, request: Request) -> int:
        """``page_size`` from 1 to 1000 (100 when not given); anything else is a 400, never silently ignored."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError({self.page_size_query_param: f"An integer from 1 to {self.max_page_size}."})
        return int(raw)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_page_size}
        return parameters


class RecentFirstPagination(KeysetPagination):
    """Uses, newest first: the order of the ``use_started`` index."""

    ordering = ("-started_at", "-id")


class PerformedPagination(KeysetPagination):
    ordering = ("-performed_at", "-id")


class SeenPagination(KeysetPagination):
    ordering = ("-seen_at", "-id")
