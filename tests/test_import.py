"""`manage.py import_fabomatic`: the databases of the old backend, brought over exactly once."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from machines import services
from machines.models import Authorization, Intervention, Machine, MachineType, MaintenancePlan, Use
from members.models import Card, Member, Role, UnknownCard
from members.setup import ensure_defaults
from telemetry.models import Board

# Copies of ../shared/data/fabomatic: real databases of the old backend (1.0.7, and the 0.4.0 and 0.2.11 schemas).
DATA = Path(__file__).resolve().parent / "data" / "fabomatic"
SAMPLE = "database-1.0.7-sample.sqldb"
MODELS = [
    Role,
    Member,
    Card,
    MachineType,
    Machine,
    Authorization,
    MaintenancePlan,
    Intervention,
    Use,
    UnknownCard,
    Board,
]
BASE = 1_795_000_000.0  # an epoch before the sample's own uses

pytestmark = pytest.mark.django_db


def snapshot() -> dict[str, int]:
    return {m.__name__: m._default_manager.count() for m in MODELS}


def run(path: Path, *args: str) -> str:
    out = StringIO()
    call_command("import_fabomatic", str(path), *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def bootstrapped(db: None) -> None:
    ensure_defaults()  # what `make run` does before anyone imports: default roles, "Default type", first admin


def copy(tmp_path: Path, name: str = SAMPLE, *sql: str) -> Path:
    """A writable copy of a sample, optionally edited: the samples themselves are never touched."""
    target = tmp_path / name
    shutil.copy(DATA / name, target)
    if sql:
        con = sqlite3.connect(target)
        for statement in sql:
            con.execute(statement)
        con.commit()
        con.close()
    return target


# 3 roles "admin"/"staff"/"fab users" (no name in common with ours), 11 users, cards "1234"/"5678" invalid.
OLD_LAB = {
    "tallies": {
        "Roles": (3, 3, 0, 0),
        "Members": (11, 11, 0, 0),
        "Cards": (11, 9, 0, 2),
        "Machine types": (3, 3, 0, 0),
        "Machines": (11, 11, 0, 0),
        "Authorizations": (0, 0, 0, 0),
        "Maintenance plans": (11, 11, 0, 0),
        "Interventions": (2, 2, 0, 0),
        "Uses": (0, 0, 0, 0),
        "Unknown cards": (0, 0, 0, 0),
        "Boards": (0, 0, 0, 0),
    },
    "rows": {
        "Role": 4 + 3,
        "Member": 2 + 11,
        "Card": 9,
        "MachineType": 1 + 3,
        "Machine": 11,
        "Authorization": 0,
        "MaintenancePlan": 11,
        "Intervention": 2,
        "Use": 0,
        "UnknownCard": 0,
        "Board": 0,
    },
}

# Rows in the old files (sqlite3), and what ends up here after `bootstrap` + import.
EXPECTED = {
    "database-0.2.11.db": OLD_LAB,
    # The archived 0.4.0 database holds the same lab as 0.2.11, at a newer schema.
    "database-0.4.0.db": OLD_LAB,
    # The 1.0.x seed: admins/Fab Staff/Fab Users/Anonymous match ours by name, "Default type" too;
    # the Anonymous user is ours; 13 cards (Anonymous has none).
    SAMPLE: {
        "tallies": {
            "Roles": (5, 1, 4, 0),
            "Members": (14, 13, 1, 0),
            "Cards": (13, 13, 0, 0),
            "Machine types": (3, 2, 1, 0),
            "Machines": (5, 5, 0, 0),
            "Authorizations": (6, 6, 0, 0),
            "Maintenance plans": (2, 2, 0, 0),
            "Interventions": (0, 0, 0, 0),
            "Uses": (114, 114, 0, 0),
            "Unknown cards": (1, 1, 0, 0),
            "Boards": (5, 5, 0, 0),
        },
        "rows": {
            "Role": 5,
            "Member": 2 + 13,
            "Card": 13,
            "MachineType": 3,
            "Machine": 5,
            "Authorization": 6,
            "MaintenancePlan": 2,
            "Intervention": 0,
            "Use": 114,
            "UnknownCard": 1,
            "Board": 5,
        },
    },
}


def tallies(path: Path, **kwargs: bool) -> dict[str, tuple[int, int, int, int]]:
    from importer.legacy import import_database

    report = import_database(path, **kwargs)
    return {name: (t.found, t.created, t.existing, t.skipped) for name, t in report.tallies.items()}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_it_imports_each_sample_with_exact_counts_and_a_second_run_changes_nothing(bootstrapped, name):
    source = DATA / name
    digest = hashlib.sha256(source.read_bytes()).hexdigest()

    assert tallies(source) == EXPECTED[name]["tallies"]
    after_first = snapshot()
    assert after_first == EXPECTED[name]["rows"]

    again = tallies(source)
    assert snapshot() == after_first
    assert all(created == 0 for _, created, _, _ in again.values())
    assert {k: (f, e + s) for k, (f, _, e, s) in again.items()} == {k: (f, f) for k, (f, *_) in again.items()}
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest  # opened read-only


def test_it_prints_a_summary_and_the_staff_who_must_reset_their_password(bootstrapped):
    out = run(DATA / SAMPLE)
    assert "Uses" in out and "114" in out
    assert "Forgotten your password?" in out and "admin@fablab.org" in out
    admin = Member.objects.get(email="admin@fablab.org")
    assert admin.is_staff and not admin.has_usable_password() and admin.role.name == "admins"
    assert Member.objects.filter(is_staff=True).count() == 2  # the bootstrap admin and the old one
    assert not Member.objects.get(legacy_id=3).has_usable_password()

    second = run(DATA / SAMPLE)
    assert "Done: 0 row(s) created." in second


def test_it_keeps_machine_ids_types_and_hours(bootstrapped):
    run(DATA / SAMPLE)
    machines = {m.id: m for m in Machine.objects.select_related("type")}
    assert {i: m.name for i, m in machines.items()} == {
        1: "Trotec Speedy 100",
        2: "Prusa MK4 #1",
        3: "Prusa MK4 #2",
        4: "Bambu X1C",
        5: "Shaper Origin",
    }
    assert machines[1].type.name == "Laser cutter" and machines[1].type.logoff_minutes == 120
    printer = machines[2].type
    assert (printer.logoff_minutes, printer.grace_minutes, printer.requires_authorization) == (0, 5, False)
    assert machines[2].hours == pytest.approx(0.466666666666667)
    default = MachineType.objects.get(name="Default type")
    assert default.logoff_minutes == 480 and default.legacy_id == 1  # bootstrap's row took the old settings
    assert Board.objects.get(machine_id=3).serial == "SIM000003"
    assert Authorization.objects.filter(machine_id=1).count() == 6


def test_it_converts_epoch_floats_to_aware_utc_datetimes(bootstrapped):
    run(DATA / SAMPLE)
    use = Use.objects.get(legacy_id=1)
    # start_timestamp 1795617541.9338262, end 1795617601.9338262 (epoch seconds, UTC)
    assert use.started_at == datetime(2026, 11, 25, 14, 39, 1, 933826, tzinfo=UTC)
    assert use.ended_at == datetime(2026, 11, 25, 14, 40, 1, 933826, tzinfo=UTC)
    offset = use.started_at.utcoffset()
    assert offset is not None
    assert offset.total_seconds() == 0
    assert (use.member.legacy_id, use.machine_id, use.duration, use.replay) == (6, 3, 60, False)
    assert Use.objects.filter(replay=True).count() == 1
    card = UnknownCard.objects.get()
    assert (card.uid, card.machine_id) == ("deadbeef", 3)
    assert card.seen_at == datetime(2026, 11, 25, 14, 39, 6, 724423, tzinfo=UTC)  # 1795617546.724423


def test_it_maps_the_old_anonymous_user_to_ours(bootstrapped):
    anonymous = Member.objects.anonymous()
    run(DATA / SAMPLE)
    assert Member.objects.filter(first_name="Anonymous").count() == 1
    assert Member.objects.anonymous().pk == anonymous.pk
    assert Member.objects.get(legacy_id=1).pk == anonymous.pk


def test_it_works_without_bootstrap_too(db):
    run(DATA / SAMPLE)
    assert Role.objects.count() == 5 and Member.objects.count() == 14  # 13 + Anonymous, created on demand
    assert Member.objects.anonymous().legacy_id == 1


def test_it_merges_the_bootstrap_admin_with_the_old_user_of_the_same_email(db, settings):
    settings.DEFAULT_ADMIN_EMAIL = "admin@fablab.org"
    first = ensure_defaults()
    assert first is not None
    out = run(DATA / SAMPLE)
    admin = Member.objects.get(email="admin@fablab.org")
    assert admin.legacy_id == 2 and admin.check_password(first.password)  # still logs in with its password
    assert list(admin.cards.values_list("uid", flat=True)) == ["12345678"]
    assert Member.objects.count() == 14
    assert "Forgotten your password?" not in out


def test_it_handles_the_quirks_of_old_data(bootstrapped, tmp_path):
    path = copy(
        tmp_path,
        SAMPLE,
        "UPDATE users SET email = 'GIULIA@example.org' WHERE user_id = 4",  # same as user 3, other case
        "UPDATE users SET email = '' WHERE user_id = 5",
        "UPDATE users SET deleted = 1 WHERE user_id = 6",
        "UPDATE users SET card_UUID = '7AC7513F' WHERE user_id = 7",
        "UPDATE users SET card_UUID = 'not-a-card' WHERE user_id = 9",
        "UPDATE users SET receive_weekly_summary = 1 WHERE user_id IN (8, 14)",  # 14 has no e-mail
        "UPDATE machines SET machine_type_id = NULL WHERE machine_id = 5",
        "UPDATE machine_types SET grace_period_min = NULL, access_management = NULL WHERE type_id = 3",
        "UPDATE boards SET ip_address = 'wifi?', heap = '183456' WHERE machine_id = 3",
        "INSERT INTO boards VALUES (6, 4, '10.0.0.4', 'old', 1795617000.0, 'OLD', 1)",  # older than board 2
        "INSERT INTO boards VALUES (7, 5, '10.0.0.5', 'new', 1795618000.0, 'NEW', 2)",  # newer than board 3
        "UPDATE interventions SET replay = NULL",
        "INSERT INTO interventions VALUES (1, 1, 1, 3, 1795617000.0, NULL)",
    )
    out = run(path)
    by_old = {m.legacy_id: m for m in Member.objects.filter(legacy_id__isnull=False)}
    assert by_old[3].email == "giulia@example.org" and by_old[4].email is None
    assert "e-mail GIULIA@example.org is already used" in out
    assert by_old[5].email is None
    assert by_old[6].deleted_at is not None and by_old[7].deleted_at is None
    assert Card.objects.get(uid="7ac7513f").member == by_old[7]
    assert not by_old[9].cards.exists() and "'not-a-card'" in out
    assert "Cards: 0 user(s)" not in out and "have no card UID" not in out  # only Anonymous lacks one: not a user
    assert by_old[8].receive_weekly_summary and not by_old[14].receive_weekly_summary
    assert by_old[14].disabled
    assert Machine.objects.get(pk=5).type.name == "Default type"
    printer = MachineType.objects.get(name="3D printer")
    assert printer.grace_minutes == 2 and printer.requires_authorization
    board3 = Board.objects.get(machine_id=3)
    assert board3.ip_address is None and board3.free_heap == 183456
    assert Board.objects.get(machine_id=4).serial == "SIM000004"
    assert Board.objects.get(machine_id=5).serial == "NEW"
    assert Intervention.objects.get().replay is False

    assert run(path).endswith("Done: 0 row(s) created.\n")


def test_it_keeps_open_uses_open_but_only_the_newest_per_machine(bootstrapped, tmp_path):
    path = copy(
        tmp_path,
        SAMPLE,
        f"INSERT INTO uses VALUES (200, 5, 1, {BASE + 100}, {BASE + 500}, NULL, 0)",
        f"INSERT INTO uses VALUES (201, 6, 1, {BASE + 1000}, {BASE + 1200}, NULL, 1)",
        f"INSERT INTO uses VALUES (202, 7, 2, {BASE + 50}, {BASE + 60}, NULL, NULL)",
    )
    out = run(path)
    assert set(Use.objects.filter(ended_at__isnull=True).values_list("legacy_id", flat=True)) == {201, 202}
    closed = Use.objects.get(legacy_id=200)
    assert closed.ended_at == datetime.fromtimestamp(BASE + 500, tz=UTC) and closed.duration == 400
    assert Use.objects.get(legacy_id=201).replay and not Use.objects.get(legacy_id=202).replay
    assert "1 open use(s)" in out and "200" in out

    before = snapshot()
    run(path)
    assert snapshot() == before
    assert Use.objects.filter(ended_at__isnull=True).count() == 2


def old_rule(path: Path) -> dict[int, tuple[int, float, bool, str]]:
    """The old backend's maintenance rule (docs/protocol.md §8.9), computed row by row from the old file."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    uses = con.execute("SELECT machine_id, start_timestamp, end_timestamp FROM uses").fetchall()
    interventions = con.execute("SELECT maintenance_id, machine_id, timestamp FROM interventions").fetchall()
    result = {}
    for plan, machine, every, lcd in con.execute(
        "SELECT maintenance_id, machine_id, hours_between, lcd_message FROM maintenances ORDER BY maintenance_id"
    ):
        last = max((ts for p, m, ts in interventions if p == plan and m == machine), default=0)
        seconds = sum(end - start for m, start, end in uses if m == machine and end is not None and start > last)
        result[plan] = (machine, seconds, seconds > every * 3600, lcd or "")
    con.close()
    return result


def test_it_sets_the_maintenance_counters_to_the_old_rule(bootstrapped, tmp_path):
    hour = 3600.0
    path = copy(
        tmp_path,
        SAMPLE,
        "UPDATE machines SET machine_hours = 1.0 WHERE machine_id = 1",  # below its use: the meter is raised
        "INSERT INTO maintenances VALUES (3, 25.0, 'Check belts', 1, NULL, 'belts', '')",
        "INSERT INTO maintenances VALUES (4, 0.1, 'Oil the rails', 3, NULL, 'Oil the rails now!', NULL)",
        # machine 1: 30 h, intervention on plan 1, 25 h, intervention on plan 3, 20 h (+ a use starting exactly then)
        f"INSERT INTO uses VALUES (300, 5, 1, {BASE}, {BASE + 30 * hour}, {BASE + 30 * hour}, 0)",
        f"INSERT INTO interventions VALUES (1, 1, 1, 3, {BASE + 31 * hour}, 0)",
        f"INSERT INTO uses VALUES (301, 5, 1, {BASE + 32 * hour}, {BASE + 57 * hour}, {BASE + 57 * hour}, 0)",
        f"INSERT INTO interventions VALUES (2, 3, 1, 4, {BASE + 58 * hour}, 1)",
        f"INSERT INTO uses VALUES (302, 5, 1, {BASE + 58 * hour}, {BASE + 60 * hour}, {BASE + 60 * hour}, 0)",
        f"INSERT INTO uses VALUES (303, 5, 1, {BASE + 61 * hour}, {BASE + 81 * hour}, {BASE + 81 * hour}, 0)",
        f"INSERT INTO uses VALUES (304, 5, 3, {BASE}, {BASE + 9 * hour}, NULL, 0)",  # open: never counts
        f"INSERT INTO interventions VALUES (3, 2, 2, 4, {BASE - 10 * hour}, NULL)",  # before all use of machine 2
    )
    expected = old_rule(path)
    out = run(path)
    assert "raised" in out

    plans = {p.legacy_id: p for p in MaintenancePlan.objects.select_related("machine")}
    assert set(plans) == set(expected) == {1, 2, 3, 4}
    dues = {k: due for k, (_, _, due, _) in expected.items()}
    assert dues == {1: True, 2: False, 3: False, 4: True}  # the scenario covers both outcomes
    for legacy_id, (machine_id, seconds, due, _lcd) in expected.items():
        plan = plans[legacy_id]
        assert plan.machine_id == machine_id
        assert plan.hours_since() == pytest.approx(seconds / 3600, abs=1e-6)
        assert plan.is_due() is due
    assert plans[4].lcd_message == "Oil the rails no"  # cut to the 16 characters of the LCD
    for machine in Machine.objects.all():
        first_due = next((lcd for _, (m, _, due, lcd) in sorted(expected.items()) if m == machine.id and due), None)
        assert services.maintenance_status(machine) == ((True, first_due[:16]) if first_due else (False, ""))
    # The intervention's meter reading is the one its plan counts from.
    assert Intervention.objects.get(legacy_id=1).machine_hours == pytest.approx(plans[1].done_at_hours)
    assert Intervention.objects.get(legacy_id=2).machine_hours == pytest.approx(plans[3].done_at_hours)
    assert Intervention.objects.get(legacy_id=2).replay
    assert Machine.objects.get(pk=1).hours == pytest.approx(expected[1][1] / 3600)  # raised from 1.0

    before = {p.pk: p.done_at_hours for p in MaintenancePlan.objects.all()}
    run(path)
    assert {p.pk: p.done_at_hours for p in MaintenancePlan.objects.all()} == before


def test_it_reads_the_first_schema_without_later_columns(db, tmp_path):
    """Revision 2dc275252e0e: no grace, access management, boards, LCD message, replay or weekly summary."""
    path = tmp_path / "database-0.0.18.db"
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE machine_types (type_id INTEGER PRIMARY KEY, type_name VARCHAR, type_timeout_min INTEGER);
        CREATE TABLE roles (role_id INTEGER PRIMARY KEY, role_name VARCHAR, authorize_all BOOLEAN,
            reserved BOOLEAN, maintenance BOOLEAN, backend_admin BOOLEAN);
        CREATE TABLE machines (machine_id INTEGER PRIMARY KEY, machine_name VARCHAR, machine_type_id INTEGER,
            machine_hours FLOAT, blocked BOOLEAN, last_seen FLOAT);
        CREATE TABLE users (user_id INTEGER PRIMARY KEY, name VARCHAR, surname VARCHAR, role_id INTEGER,
            card_UUID VARCHAR, disabled BOOLEAN, deleted BOOLEAN, password_hash VARCHAR, email VARCHAR);
        CREATE TABLE authorizations (authorization_id INTEGER PRIMARY KEY, user_id INTEGER, machine_id INTEGER);
        CREATE TABLE maintenances (maintenance_id INTEGER PRIMARY KEY, hours_between FLOAT, description VARCHAR,
            machine_id INTEGER, attachment VARCHAR);
        CREATE TABLE unknown_cards (id INTEGER PRIMARY KEY, card_UUID VARCHAR, timestamp FLOAT, machine_id INTEGER);
        CREATE TABLE uses (use_id INTEGER PRIMARY KEY, user_id INTEGER, machine_id INTEGER, start_timestamp FLOAT,
            last_seen FLOAT, end_timestamp FLOAT);
        CREATE TABLE interventions (intervention_id INTEGER PRIMARY KEY, maintenance_id INTEGER,
            machine_id INTEGER, user_id INTEGER, timestamp FLOAT);
        INSERT INTO machine_types VALUES (1, 'LASER', 60);
        INSERT INTO roles VALUES (1, 'admin', 1, 1, 1, 1);
        INSERT INTO machines VALUES (7, 'LASER 1', 1, 2.0, 0, NULL), (8, 'DRILL', NULL, 0.0, 1, NULL);
        INSERT INTO users VALUES (1, 'Mario', 'Rossi', 1, 'AABBCCDD', 0, 0, 'x', 'mario@example.org'),
            (2, 'Ada', 'Verdi', 1, NULL, 0, 0, NULL, NULL);
        INSERT INTO authorizations VALUES (1, 2, 7);
        INSERT INTO maintenances VALUES (1, 10.0, 'Clean', 7, 'manual.pdf');
        INSERT INTO interventions VALUES (1, 1, 7, 1, 1700000000.0);
        INSERT INTO uses VALUES (1, 2, 7, 1700000100.0, 1700003700.0, 1700003700.0);
        INSERT INTO unknown_cards VALUES (1, '0A0B0C0D', 1700000000.0, 8);
        """
    )
    con.close()
    out = run(path)
    assert "Boards" in out
    laser = Machine.objects.get(pk=7)
    assert (laser.type.logoff_minutes, laser.type.grace_minutes, laser.type.requires_authorization) == (60, 2, True)
    assert Machine.objects.get(pk=8).type.name == "Default type" and Machine.objects.get(pk=8).blocked
    plan = MaintenancePlan.objects.get()
    assert (plan.lcd_message, plan.instructions_url, plan.hours_since()) == ("", "", pytest.approx(1.0))
    assert Intervention.objects.get().replay is False and Use.objects.get().duration == 3600
    assert UnknownCard.objects.get().uid == "0a0b0c0d"
    mario = Member.objects.get(legacy_id=1)
    assert mario.is_staff and mario.is_superuser and mario.cards.get().uid == "aabbccdd"
    assert not Member.objects.get(legacy_id=2).is_staff  # a portal user needs an e-mail
    assert "1 user(s) have no card UID" in out
    assert Board.objects.count() == 0


def write_random(path: Path) -> None:
    path.write_bytes(os.urandom(16384))


def write_text(path: Path) -> None:
    path.write_text("user_id,name\n1,Mario\n" * 200)


def write_empty_file(path: Path) -> None:
    path.write_bytes(b"")  # SQLite reads this as an empty database


def write_other_sqlite(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, login TEXT)")
    con.close()


def write_users_without_email(path: Path) -> None:
    shutil.copy(DATA / SAMPLE, path)
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE users DROP COLUMN email")
    con.close()


def write_corrupt_sample(path: Path) -> None:
    data = bytearray((DATA / SAMPLE).read_bytes())
    data[4096 : 4096 * 4] = os.urandom(4096 * 3)  # b-tree pages past the header: a damaged disk
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "make",
    [write_random, write_text, write_empty_file, write_other_sqlite, write_users_without_email, write_corrupt_sample],
)
def test_it_rejects_a_file_that_is_not_a_fabomatic_database_and_writes_nothing(bootstrapped, tmp_path, make):
    path = tmp_path / "database.sqldb"
    make(path)
    before = snapshot()
    with pytest.raises(CommandError, match="nothing was imported|not an SQLite database|corrupt"):
        run(path)
    assert snapshot() == before


def test_it_rejects_a_missing_file(bootstrapped, tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        run(tmp_path / "nope.sqldb")


def test_it_writes_nothing_when_the_old_database_fails_half_way(bootstrapped, tmp_path):
    # Roles, members, machines… are written before the uses; a use row that cannot be read rolls all back.
    path = copy(
        tmp_path,
        SAMPLE,
        "DROP TABLE uses",
        "CREATE VIEW uses AS SELECT 1 AS use_id, 3 AS user_id, 1 AS machine_id, 0.0 AS start_timestamp, "
        "0.0 AS last_seen, json('not json') AS end_timestamp, 0 AS replay",
    )
    before = snapshot()
    with pytest.raises(CommandError, match="cannot read the old database"):
        run(path)
    assert snapshot() == before


def test_it_refuses_a_different_database_on_top_of_an_earlier_import(bootstrapped):
    run(DATA / "database-0.4.0.db")
    before = snapshot()
    with pytest.raises(CommandError, match="different FabOMatic database"):
        run(DATA / SAMPLE)
    assert snapshot() == before
    run(DATA / "database-0.2.11.db")  # the same lab, an older copy: recognised, ids agree


def test_dry_run_reports_the_counts_and_writes_nothing(bootstrapped):
    before = snapshot()
    out = run(DATA / SAMPLE, "--dry-run")
    assert snapshot() == before
    assert "Dry run" in out and "Done: 162 row(s) would be created." in out
    assert any(line.split()[:2] == ["Uses", "114"] and line.split()[2] == "114" for line in out.splitlines())
