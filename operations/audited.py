"""The "Audit log" page of each object in the portal (django-auditlog's per-object view), linked from its page."""

from __future__ import annotations

from typing import Any

from auditlog.mixins import AuditlogHistoryAdminMixin
from django.http import HttpRequest, HttpResponse
from django.urls import NoReverseMatch, reverse


class AuditedAdmin(AuditlogHistoryAdminMixin):
    """An "Audit log" link on the object's page (next to History), to every recorded change of that object."""

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        opts = self.model._meta
        try:
            url = reverse(f"admin:{opts.app_label}_{opts.model_name}_auditlog", args=[object_id])
        except NoReverseMatch:
            url = ""
        extra_context = {**(extra_context or {}), "audit_url": url}
        return super().change_view(request, object_id, form_url, extra_context)
