"""GDPR right of access: the one-page member data report."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from machines import services
from machines.models import Use


@pytest.fixture
def used(lab):
    now = timezone.now()
    for hours in (1, 2):
        use = Use.objects.create(
            member=lab.normal, machine=lab.laser, started_at=now - timedelta(hours=hours), last_seen=now
        )
        services.close_use(use, ended_at=use.started_at + timedelta(minutes=30))
    return lab


def test_it_shows_everything_held_about_a_member(admin_client, used):
    response = admin_client.get(reverse("fabomatic_member_report", args=[used.normal.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    assert "nina@lab.test" in page and "aabbccd3" in page and "LASER 1" in page
    assert response.context["report"].use_count == 2
    assert response.context["report"].total_seconds == 3600
    assert f"member__id__exact={used.normal.pk}" in response.context["uses_url"]


def test_it_costs_the_same_whatever_the_history(used, django_assert_max_num_queries):
    from members.report import member_report

    with django_assert_max_num_queries(6):  # cards, authorizations, uses (2), interventions, refusals
        member_report(used.normal)


def test_it_is_refused_to_anonymous_and_non_staff(client, used):
    url = reverse("fabomatic_member_report", args=[used.normal.pk])
    assert client.get(url).status_code == 302
    used.normal.set_password("pw-Secret-123")
    used.normal.save()
    client.force_login(used.normal)
    assert client.get(url).status_code == 302
