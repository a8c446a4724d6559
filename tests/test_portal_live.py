"""Portal edits reach open dashboards, and the uses list stays an index walk at any size."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from asgiref.sync import async_to_sync
from channels.layers import channel_layers, get_channel_layer
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from machines.dashboard import events
from machines.models import Use

from .conftest import Lab


@pytest.fixture
def dashboard_channel() -> Iterator[str]:
    channel_layers.backends = {}
    layer = get_channel_layer()
    name = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(events.GROUP, name)
    yield name
    channel_layers.backends = {}


def next_tile(channel: str, timeout: float = 10) -> dict:
    """The next tile update on the channel; fails (instead of waiting for ever) when none comes."""

    async def receive() -> dict:
        return await asyncio.wait_for(get_channel_layer().receive(channel), timeout)

    message = async_to_sync(receive)()
    assert message["type"] == "machine.update"
    return message["tile"]


def test_blocking_a_machine_in_the_portal_updates_open_dashboards(
    admin_client: Client, lab: Lab, dashboard_channel: str, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:machines_machine_changelist"), {"action": "block", "_selected_action": [lab.laser.pk]}
        )
    assert response.status_code == 302
    tile = next_tile(dashboard_channel)
    assert (tile["id"], tile["state"]) == (lab.laser.pk, "blocked")


def test_ending_a_use_in_the_portal_frees_the_tile(
    admin_client: Client, lab: Lab, dashboard_channel: str, django_capture_on_commit_callbacks
) -> None:
    now = timezone.now()
    use = Use.objects.create(member=lab.normal, machine=lab.laser, started_at=now, last_seen=now)
    with django_capture_on_commit_callbacks(execute=True):
        form = {"action": "end_now", "_selected_action": [use.pk], "post": "yes"}  # confirmed; the board is offline
        admin_client.post(reverse("admin:machines_use_changelist"), form)
    tile = next_tile(dashboard_channel)
    assert tile["id"] == lab.laser.pk and tile["state"] != "in_use" and tile["user"] is None


@pytest.mark.parametrize("params", ["", "?machine__id__exact=1", "?member__id__exact=1"])
def test_the_uses_list_walks_an_index_instead_of_sorting(
    admin_client: Client, lab: Lab, params: str, django_assert_max_num_queries
) -> None:
    """With a million uses a sort of the table took 1.6 s; the query plan must read the index in order."""
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(reverse("admin:machines_use_changelist") + params).status_code == 200
    listing = [
        q["sql"] for q in queries.captured_queries if 'FROM "machines_use"' in q["sql"] and "ORDER BY" in q["sql"]
    ]
    assert listing, "the uses list query was not found"
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + listing[-1])
        plan = " | ".join(str(row[-1]) for row in cursor.fetchall())
    assert "TEMP B-TREE FOR ORDER BY" not in plan, plan
    assert "use_" in plan, plan


def test_member_and_machine_pages_list_their_latest_uses(admin_client: Client, lab: Lab) -> None:
    now = timezone.now()
    use = Use.objects.create(member=lab.normal, machine=lab.laser, started_at=now, last_seen=now, replay=True)
    link = reverse("admin:machines_use_change", args=[use.pk])
    machine_page = admin_client.get(reverse("admin:machines_machine_change", args=[lab.laser.pk])).content.decode()
    member_page = admin_client.get(reverse("admin:members_member_change", args=[lab.normal.pk])).content.decode()
    assert f'<a href="{link}">{lab.normal}</a>' in machine_page  # the machine page names the member
    assert f'<a href="{link}">{lab.laser}</a>' in member_page  # the member page names the machine
    assert "fab-icon" in machine_page and "fab-icon" in member_page  # replayed: flagged
