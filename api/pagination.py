"""Keyset (cursor) pagination: each page is one indexed range read, whatever the length of the history.

The uses are walked along the ``use_started`` index (``-started_at, -id``), or ``use_machine_recent`` /
``use_member_recent`` when filtered by machine or member; no page ever counts the table (no ``COUNT(*)``) or skips
rows with an OFFSET over the history. ``next`` and ``previous`` are opaque links."""

from __future__ import annotations

from rest_framework.pagination import CursorPagination


class KeysetPagination(CursorPagination):
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000
    ordering: str | tuple[str, ...] = "id"


class RecentFirstPagination(KeysetPagination):
    """Uses, newest first: the order of the ``use_started`` index."""

    ordering = ("-started_at", "-id")


class PerformedPagination(KeysetPagination):
    ordering = ("-performed_at", "-id")


class SeenPagination(KeysetPagination):
    ordering = ("-seen_at", "-id")
