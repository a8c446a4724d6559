"""What keeps the daily pages fast on a big history (timings are in bench/pages.py, never asserted here)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from pytest_django import DjangoAssertNumQueries

from machines import history_search
from machines.models import Machine, Use
from members.models import Member

from .conftest import Lab

pytestmark = pytest.mark.django_db


@pytest.fixture
def history(lab: Lab) -> list[Use]:
    now = timezone.now()
    members = [lab.normal, lab.staff, lab.admin]
    return Use.objects.bulk_create(
        Use(
            member=members[i % 3],
            machine=lab.laser if i % 2 else lab.printer,
            started_at=now - timedelta(hours=i + 1),
            ended_at=now - timedelta(hours=i),
            last_seen=now - timedelta(hours=i),
            duration=3600,
        )
        for i in range(30)
    )


@pytest.mark.parametrize("term", ["Nina", "nina test", "LASER", "Sam printer", "lab.test", "nobody", "Test LASER"])
def test_the_broad_and_the_narrow_history_search_find_the_same_rows(
    history: list[Use], term: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two ways search_history filters (indexed ids, or ids no index serves) must agree on every search."""
    narrow = list(history_search.search_history(Use.objects.all(), term).values_list("pk", flat=True))
    monkeypatch.setattr(history_search, "BROAD", 1)  # every search with a match counts as broad
    broad = list(history_search.search_history(Use.objects.all(), term).values_list("pk", flat=True))
    assert narrow == broad
    if term == "nobody":
        assert narrow == []
    else:
        assert narrow


def test_the_uses_list_search_pages_through_a_broad_match(
    admin_client: Client, history: list[Use], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_search, "BROAD", 1)
    page = admin_client.get("/admin/machines/use/?q=Test").content.decode()
    assert page.count('class="field-started"') == 30


def test_the_machine_and_member_pages_stay_within_a_query_budget(
    admin_client: Client, lab: Lab, history: list[Use], django_assert_max_num_queries: DjangoAssertNumQueries
) -> None:
    for i in range(40):  # a machine many members may use, a member with many cards' worth of history
        member = Member.objects.create_user(email=f"x{i}@lab.test", first_name=f"X{i}")
        lab.laser.authorizations.create(member=member)
    admin_client.get("/admin/")  # the session and the content types are cached before counting
    with django_assert_max_num_queries(40):
        admin_client.get(f"/admin/machines/machine/{lab.laser.pk}/change/")
    with django_assert_max_num_queries(40):
        admin_client.get(f"/admin/members/member/{lab.normal.pk}/change/")
    assert Machine.objects.count() == 2
