"""Shared fixtures: the acceptance-harness lab of docs/protocol.md §7, and real servers on free ports."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pytest_django import Settings

from machines.models import Authorization, Machine, MachineType, MaintenancePlan
from members.models import Card, Member, Role
from telemetry.mqtt import Bridge

from .boards import SimBoard
from .services import Broker, Redis, mosquitto, redis_server


@dataclass
class Lab:
    laser: Machine  # M1: authorization required, 10 h maintenance item "pulire lente"
    printer: Machine  # M2: no authorization needed
    admin: Member  # A aabbccd1: authorize_all
    staff: Member  # S aabbccd2: maintenance role, authorized on M1
    normal: Member  # N aabbccd3: authorized on M1
    unauthorized: Member  # U aabbccd4
    disabled: Member  # D aabbccd5: disabled, authorized on M1
    plan: MaintenancePlan


@pytest.fixture
def lab(db: None) -> Lab:
    t1 = MachineType.objects.create(name="T1", logoff_minutes=1440, grace_minutes=2, requires_authorization=True)
    t2 = MachineType.objects.create(name="T2", requires_authorization=False)
    laser = Machine.objects.create(id=1, name="LASER 1", type=t1)
    printer = Machine.objects.create(id=2, name="PRINTER 1", type=t2)
    plan = MaintenancePlan.objects.create(
        machine=laser, hours_between=10, description="Clean the lens", lcd_message="pulire lente"
    )
    admin_role = Role.objects.create(name="ADMIN", authorize_all=True, maintenance=True)
    staff_role = Role.objects.create(name="STAFF", maintenance=True)
    user_role = Role.objects.create(name="USER")

    def member(name: str, role: Role, uid: str, **extra: Any) -> Member:
        m = Member.objects.create_user(
            email=f"{name.lower()}@lab.test", first_name=name, last_name="Test", role=role, **extra
        )
        Card.objects.create(uid=uid, member=m)
        return m

    a = member("Alice", admin_role, "aabbccd1")
    s = member("Sam", staff_role, "aabbccd2")
    n = member("Nina", user_role, "aabbccd3")
    u = member("Ugo", user_role, "aabbccd4")
    d = member("Dario", user_role, "aabbccd5", disabled=True)
    for m in (s, n, d):
        Authorization.objects.create(member=m, machine=laser)
    return Lab(laser=laser, printer=printer, admin=a, staff=s, normal=n, unauthorized=u, disabled=d, plan=plan)


@pytest.fixture
def boss(lab: Lab) -> Member:
    """A portal administrator (a BACKEND role): the System page's backup, restore and credentials are theirs."""
    return Member.objects.create_user(
        email="boss@lab.test",
        first_name="Boss",
        role=Role.objects.create(name="BACKEND", backend_admin=True),
        is_staff=True,
    )


@pytest.fixture
def fast_passwords(settings: Settings) -> None:
    """MD5 instead of PBKDF2 for modules that log in per test (admin_client): a full PBKDF2 run per test otherwise."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """A real Mosquitto on a free port, shared by the session (tests that restart it use `own_broker`)."""
    with mosquitto() as b:
        yield b


@pytest.fixture
def own_broker() -> Iterator[Broker]:
    with mosquitto() as b:
        yield b


@pytest.fixture(scope="session")
def redis() -> Iterator[Redis]:
    with redis_server() as r:
        yield r


# --- the bridge in this process, and simulated boards on machines 1 and 2 ---------------------------------------


@pytest.fixture
def bridge(broker: Broker, settings: Settings) -> Iterator[Bridge]:
    """The real bridge on the session's broker, with the test database (tests marked django_db(transaction=True))."""
    settings.MQTT = {**settings.MQTT, "HOST": "127.0.0.1", "PORT": broker.port, "TOPIC": "machine"}
    b = Bridge(client_id=f"test-bridge-{uuid.uuid4().hex[:8]}", housekeeping_every=3600)
    b.start()
    assert b.subscribed.wait(10), "bridge did not subscribe"
    yield b
    b.stop()


@pytest.fixture
def m1(bridge: Bridge, broker: Broker) -> Iterator[SimBoard]:
    board = SimBoard(broker.port, 1)
    yield board
    board.close()


@pytest.fixture
def m2(bridge: Bridge, broker: Broker) -> Iterator[SimBoard]:
    board = SimBoard(broker.port, 2)
    yield board
    board.close()
