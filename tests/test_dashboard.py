"""The live dashboard on the admin index: one state per machine, counters, constant queries."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from machines.dashboard.tiles import Tile, build_tile, count_states, elapsed_text, machine_tile, tile_state
from machines.dashboard.tiles import tiles as dashboard_tiles
from machines.models import Machine, MachineType, MaintenancePlan, Use
from members.models import Member, Role
from telemetry.models import Board

from .services import first_group


@pytest.mark.parametrize(
    ("flags", "state"),
    [
        ({"in_use": True, "blocked": True, "maintenance": True, "online": False}, "in_use"),
        ({"in_use": False, "blocked": True, "maintenance": True, "online": False}, "blocked"),
        ({"in_use": False, "blocked": False, "maintenance": True, "online": False}, "maintenance"),
        ({"in_use": False, "blocked": False, "maintenance": False, "online": False}, "offline"),
        ({"in_use": False, "blocked": False, "maintenance": False, "online": True}, "free"),
    ],
)
def test_it_gives_one_state_in_the_old_dashboards_precedence(flags: dict, state: str) -> None:
    assert tile_state(**flags) == state


def _tile(machine_id: int) -> Tile:
    """The tile of a machine that exists."""
    tile = machine_tile(machine_id)
    assert tile is not None
    return tile


def _states_on_page(html: str) -> dict[int, str]:
    return {int(i): s for i, s in re.findall(r'class="fab-tile" data-id="(\d+)" data-state="(\w+)"', html)}


def _counters_on_page(html: str) -> dict[str, int]:
    found = re.findall(r'data-state="(\w+)">\s*<span class="fab-count">(\d+)</span>', html)
    return {state: int(n) for state, n in found}


def _machine(pk: int, name: str, **fields: object) -> Machine:
    """A machine of a type of its own (the lab's are 1 and 2)."""
    kind = MachineType.objects.create(name=f"Type {pk}")
    return Machine.objects.create(id=pk, name=name, type=kind, **fields)


def _plan(machine: Machine, **fields: object) -> MaintenancePlan:
    """A maintenance item like the lab's 10 h lens cleaning; fields override it."""
    fields = {"hours_between": 10, "description": "Clean the lens", "lcd_message": "pulire lente", **fields}
    return MaintenancePlan.objects.create(machine=machine, **fields)


def _member(**fields: Any) -> Member:
    """A member of the lab's USER role, with an address of their own."""
    n = Member.objects.count()
    role = Role.objects.get(name="USER")
    return Member.objects.create_user(email=f"member{n}@lab.test", first_name=f"Member{n}", role=role, **fields)


def _use(machine: Machine, **fields: object) -> Use:
    """A use started now by a member of its own (open unless ended_at is given)."""
    now = timezone.now()
    return Use.objects.create(member=_member(), machine=machine, started_at=now, last_seen=now, **fields)


@pytest.fixture
def every_state(lab) -> dict[str, Machine]:
    """One machine in each state, on top of the lab (laser: in use by Nina despite a due item)."""
    now = timezone.now()
    Machine.objects.filter(pk__in=[1, 2]).update(last_seen=now)
    lab.laser.refresh_from_db()
    Machine.objects.filter(pk=1).update(hours=12)  # the 10 h lens cleaning is due
    Use.objects.create(member=lab.normal, machine=lab.laser, started_at=now - timedelta(minutes=5), last_seen=now)
    Board.objects.create(machine=lab.laser, firmware="hardware-rev0-it_IT,v1.0.4", ip_address="192.168.1.50")
    blocked = _machine(3, "BLOCKED SAW", blocked=True, last_seen=now, hours=50)
    _plan(blocked, hours_between=1, lcd_message="oil")
    maintenance = _machine(4, "MILL", last_seen=None, hours=3)
    _plan(maintenance, hours_between=2, description="Grease the spindle", lcd_message="")
    offline = _machine(5, "LATHE", last_seen=now - timedelta(minutes=10))
    return {
        "in_use": lab.laser,
        "free": lab.printer,
        "blocked": blocked,
        "maintenance": maintenance,
        "offline": offline,
    }


def test_it_shows_each_machine_once_in_its_state_with_counters(admin_client, every_state) -> None:
    response = admin_client.get("/admin/")
    html = response.content.decode()
    assert response.status_code == 200
    assert _states_on_page(html) == {m.pk: state for state, m in every_state.items()}
    assert _counters_on_page(html) == {
        "in_use": 1, "blocked": 1, "out_of_order": 0, "to_check": 0, "maintenance": 1, "offline": 1, "free": 1
    }  # fmt: skip
    # IN USE shows the member's first name and the elapsed time; MAINTENANCE the due item; the board its firmware.
    assert '<span class="fab-tile-user">Nina</span>' in html
    assert re.search(r'class="fab-tile-elapsed"[^>]*>0:0[45]:\d\d</time>', html)
    assert "Grease the spindle"[:16] in html
    assert "hardware-rev0-it_IT,v1.0.4" in html
    # The script gets the same tiles as data.
    data = json.loads(first_group(r'id="fab-tiles-data" type="application/json">(.*?)</script>', html))
    assert {t["id"]: t["state"] for t in data} == _states_on_page(html)


def test_it_keeps_the_app_list_below_the_dashboard(admin_client, lab) -> None:
    html = admin_client.get("/admin/").content.decode()
    assert html.index('id="fab-dashboard"') < html.index('id="content-main"')
    assert "recent-actions-module" in html


def test_it_builds_every_tile_in_five_queries_whatever_the_lab_or_history_size(
    django_assert_num_queries, every_state
) -> None:
    # Machines, plans, open uses, and the machines locked by a fault report or a check after use.
    with django_assert_num_queries(5):
        few = dashboard_tiles()
    for n in range(20):
        machine = _machine(100 + n, f"MACHINE {n}", last_seen=timezone.now())
        _plan(machine)
        Board.objects.create(machine=machine, firmware=f"fw{n}")
        _use(machine, ended_at=timezone.now(), duration=60)
        if n % 2:
            _use(machine)
    # Machines, plans, open uses, and the machines locked by a fault report or a check after use.
    with django_assert_num_queries(5):
        many = dashboard_tiles()
    assert len(many) == len(few) + 20
    assert count_states(many)["in_use"] == 1 + 10


def test_it_reads_only_open_uses(every_state) -> None:
    for _ in range(5):
        _use(every_state["free"], ended_at=timezone.now(), duration=10)
    with CaptureQueriesContext(connection) as queries:
        dashboard_tiles()
    use_queries = [q["sql"] for q in queries.captured_queries if '"machines_use"' in q["sql"]]
    assert len(use_queries) == 1
    assert '"machines_use"."ended_at" IS NULL' in use_queries[0]


def test_it_turns_a_silent_machine_offline_and_a_fresh_one_free(lab) -> None:
    now = timezone.now()
    Machine.objects.filter(pk=2).update(last_seen=now - timedelta(seconds=89))
    assert _tile(2)["state"] == "free"
    Machine.objects.filter(pk=2).update(last_seen=now - timedelta(seconds=91))
    assert _tile(2)["state"] == "offline"


def test_it_puts_the_first_due_item_on_a_maintenance_tile(lab) -> None:
    MaintenancePlan.objects.create(machine=lab.laser, hours_between=1, description="Check the belts")
    lab.laser.hours = 11
    lab.laser.save()
    machine = Machine.objects.prefetch_related("plans").get(pk=lab.laser.pk)
    tile = build_tile(machine, None)
    assert (tile["state"], tile["maintenance"]) == ("maintenance", "pulire lente")


def test_it_formats_elapsed_time_as_the_script_does() -> None:
    start = timezone.now()
    assert elapsed_text(start, start + timedelta(hours=2, minutes=3, seconds=4)) == "2:03:04"
    assert elapsed_text(start, start - timedelta(seconds=5)) == "0:00:00"


def test_it_draws_an_empty_lab(admin_client) -> None:
    html = admin_client.get("/admin/").content.decode()
    assert 'class="fab-empty"' in html
    assert _counters_on_page(html) == dict.fromkeys(
        ("in_use", "blocked", "out_of_order", "to_check", "maintenance", "offline", "free"), 0
    )


def test_it_refuses_the_dashboard_to_anonymous_and_non_staff(client, lab) -> None:
    response = client.get("/admin/")
    assert response.status_code == 302 and "/login/" in response["Location"]
    client.force_login(_member(is_staff=False))
    response = client.get("/admin/")
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert "LASER 1" not in response.content.decode()


def test_it_serves_its_script_and_styles_locally(admin_client, lab) -> None:
    html = admin_client.get("/admin/").content.decode()
    for asset in ("fabomatic/dashboard.js", "fabomatic/dashboard.css"):
        assert f"/static/{asset}" in html
    assert not re.search(r'<(script|link)[^>]+(src|href)="(https?:)?//', html)


@pytest.mark.django_db
def test_the_tiles_escape_what_boards_and_staff_typed(admin_client) -> None:
    """The tiles are drawn in Python (format_html): a machine name, a member's first name or a board's firmware
    string with markup must come out as text."""
    kind = MachineType.objects.create(name="Kind", requires_authorization=False)
    now = timezone.now()
    machine = Machine.objects.create(id=7, name="<b>CNC</b>", type=kind, last_seen=now)
    Board.objects.create(machine=machine, serial="S7", firmware='"><script>alert(1)</script>', ip_address="10.0.0.7")
    member = Member.objects.create_user(email="x@lab.test", first_name="<i>Ann</i>", role=Role.objects.first())
    Use.objects.create(member=member, machine=machine, started_at=now, last_seen=now)

    html = admin_client.get("/admin/").content.decode()

    tiles = html.split('id="fab-tiles"')[1].split("</div>\n")[0]
    assert "<script>" not in tiles and "<b>CNC" not in tiles and "<i>Ann" not in tiles
    assert "&lt;b&gt;CNC&lt;/b&gt;" in tiles and "&lt;i&gt;Ann&lt;/i&gt;" in tiles
    assert "&quot;&gt;&lt;script&gt;" in tiles and "10.0.0.7" in tiles
