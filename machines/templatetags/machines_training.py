"""``{% training_panel %}``: the trainings of a member or a machine that have expired or expire soon, on its page."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import template
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from fabomatic.http import acting_member
from machines import safety, training
from machines.models import Authorization, Machine
from machines.training_admin import expires_html, trained_by_text
from members.models import Member

register = template.Library()

SHOWN = 50


@register.inclusion_tag("admin/machines/training_panel.html", takes_context=True)
def training_panel(context: template.Context, subject: Member | Machine) -> dict[str, Any]:
    request = context["request"]
    staff = acting_member(request)
    now = timezone.now()
    due = Authorization.objects.filter(expires_at__lte=now + timedelta(days=training.SOON_DAYS))
    is_member = isinstance(subject, Member)
    if isinstance(subject, Member):
        due = due.filter(member=subject)
        list_filter = {"member__id__exact": subject.pk}
    else:
        due = due.filter(machine=subject)
        list_filter = {"machine__id__exact": subject.pk}
    rows = [
        {
            "who": a.machine if is_member else a.member,
            "trained_by": trained_by_text(a),
            "expires": expires_html(a),
        }
        for a in due.select_related("member", "machine", "trained_by").order_by("expires_at")[:SHOWN]
    ]
    list_url = reverse("admin:machines_authorization_changelist")
    may_sign_off = isinstance(subject, Machine) and safety.may_train(staff, subject)
    return {
        "rows": rows,
        "is_member": is_member,
        "soon_days": training.SOON_DAYS,
        "renew_url": f"{list_url}?{urlencode(list_filter)}" if rows else "",
        "sign_off_url": f"{reverse('machines_sign_off')}?{urlencode({'machine': subject.pk})}" if may_sign_off else "",
    }
