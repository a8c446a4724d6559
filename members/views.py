"""Portal pages of the members app that are not plain admin pages."""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from fabomatic.admin import format_seconds
from operations import audit

from .models import Member
from .report import member_report


def member_report_view(request: HttpRequest, member_id: int) -> HttpResponse:
    """One printable page with all the data held about a member (GDPR access request)."""
    if not request.user.has_perm("members.view_member"):
        raise PermissionDenied
    member = get_object_or_404(Member, pk=member_id)
    report = member_report(member)
    audit.record(member, message=gettext_noop("Data report (all personal data) viewed"), access=True, request=request)
    query = urlencode({"member__id__exact": member.pk})
    context = {
        **admin.site.each_context(request),
        "title": _("Data held about %(name)s") % {"name": member},
        "report": report,
        "total_hours": format_seconds(report.total_seconds),
        "by_machine": [(row, format_seconds(row.seconds)) for row in report.by_machine],
        "uses_url": f"{reverse('admin:machines_use_changelist')}?{query}",
        "interventions_url": f"{reverse('admin:machines_intervention_changelist')}?{query}",
        "refusals_url": f"{reverse('admin:machines_refusal_changelist')}?{query}",
        "member_url": reverse("admin:members_member_change", args=[member.pk]),
    }
    return TemplateResponse(request, "admin/members/member/report.html", context)
