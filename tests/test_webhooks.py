"""Webhooks end to end: the outbox written in the change's transaction (by the real bridge on a real Mosquitto, and
by the portal), the delivery worker POSTing to a real HTTP receiver that verifies signatures and timestamps, retries
with backoff until given up after 24 h, and a bridge that never waits on a receiver."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import time_machine
from auditlog.models import LogEntry
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django import Settings

from integrations import delivery, outbox
from integrations.models import Delivery, Event, EventType, Subscription
from machines import safety
from machines.models import Authorization, Machine
from members.models import Member, Role

from .boards import SimBoard, time_passes
from .conftest import Lab
from .services import ROOT, Broker, free_port
from .test_bridge_robustness import ask_until_answered, spawn_bridge
from .webhook_receiver import Receiver, verify

N = "aabbccd3"
ALL = [e.value for e in EventType]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(autouse=True)
def lan_receivers(settings: Settings) -> None:
    settings.WEBHOOK_ALLOW_HTTP = True  # the test's receiver is plain HTTP on loopback
    outbox.forget_wanted()


def subscribe(receiver: Receiver, events: list[str] = ALL, url: str | None = None) -> Subscription:
    sub = Subscription.objects.create(url=url or receiver.url, events=events)
    receiver.secret = sub.secret
    return sub


def deliver() -> None:
    delivery.dispatch()
    delivery.deliver_due()


# --- the board's uses, through the real bridge ------------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_a_use_at_the_board_is_posted_signed(lab: Lab, m1: SimBoard, receiver: Receiver) -> None:
    sub = subscribe(receiver)
    assert m1.ask({"action": "startuse", "uid": N})["request_ok"] is True
    time_passes(65)
    assert m1.ask({"action": "stopuse", "uid": N, "duration": 65})["request_ok"] is True
    assert m1.ask({"action": "checkuser", "uid": "deadbeef"})["is_valid"] is False
    deliver()
    assert receiver.events() == ["use.started", "use.ended", "card.unknown"]
    assert all(r.valid for r in receiver.received) and receiver.rejected == 0
    started, ended, card = (r.body for r in receiver.received)
    assert started["event"] == "use.started" and started["data"]["machine"] == {"id": 1, "name": "LASER 1"}
    assert started["data"]["member"] == {"id": lab.normal.pk, "first_name": "Nina"}
    assert "email" not in str(started)
    assert ended["data"]["duration"] == 65 and ended["data"]["use"] == started["data"]["use"]
    assert card["data"]["uid"] == "deadbeef"
    rows = Delivery.objects.filter(subscription=sub)
    assert {(d.status, d.response_code, d.attempts) for d in rows} == {("delivered", 200, 1)}
    assert {r.delivery for r in receiver.received} == {str(d.pk) for d in rows}


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_the_bridge_answers_while_a_receiver_hangs(lab: Lab, m1: SimBoard, receiver: Receiver) -> None:
    subscribe(receiver, ["use.started", "use.ended"])
    receiver.hang.set()  # every POST waits until the test releases it
    stop = threading.Event()
    worker = threading.Thread(target=delivery.run, args=(stop, 0.05), daemon=True)
    worker.start()
    try:
        assert m1.ask({"action": "startuse", "uid": N})["request_ok"] is True
        assert receiver.arrived.wait(10), "the worker did not POST use.started"
        reply = m1.ask({"action": "stopuse", "uid": N, "duration": 0})  # within the board's own 2 s
        assert reply["request_ok"] is True
        # the POST of use.started is still waiting on the receiver: the reply never waited for it
        assert receiver.in_flight == 1
        assert Delivery.objects.get(event__type="use.started").attempts == 0
        receiver.release.set()
    finally:
        receiver.release.set()
        stop.set()
        worker.join(15)
    assert Event.objects.filter(type="use.ended").exists()


def test_nothing_is_written_unless_a_subscription_wants_it(lab: Lab, receiver: Receiver, db: None) -> None:
    from machines import services

    now = timezone.now()
    use = services.begin_use(member=lab.normal, machine_id=1, started_at=now, last_seen=now)
    assert not Event.objects.exists()
    inactive = subscribe(receiver, ["use.started"])
    inactive.active = False
    inactive.save()
    other = services.begin_use(member=lab.staff, machine_id=2, started_at=now, last_seen=now)
    assert not Event.objects.exists()
    subscribe(receiver, ["use.started"])
    services.close_use(use, ended_at=timezone.now())
    services.close_use(other, ended_at=timezone.now())
    assert not Event.objects.exists()  # use.ended is wanted by nobody
    services.begin_use(member=lab.admin, machine_id=2, started_at=timezone.now(), last_seen=timezone.now())
    assert list(Event.objects.values_list("type", flat=True)) == ["use.started"]


def test_faults_checks_maintenance_and_expiring_authorizations(lab: Lab, receiver: Receiver, db: None) -> None:
    from machines import services

    subscribe(receiver)
    safety.report_fault(lab.laser, severity="out_of_order", description="smoke", reporter="Someone")
    lab.laser.type.check_after_use = True
    lab.laser.type.save()
    start = timezone.now() - timedelta(hours=11)
    use = services.begin_use(member=lab.normal, machine_id=1, started_at=start, last_seen=start)
    services.close_use(use, ended_at=start + timedelta(hours=10, minutes=30))  # the 10 h plan becomes due
    auth = Authorization.objects.get(member=lab.staff, machine=lab.laser)
    auth.expires_at = timezone.now() + timedelta(days=3)
    auth.save()
    assert outbox.authorizations_expiring(14) == 1
    assert outbox.authorizations_expiring(14) == 1  # once per authorization and date
    outbox.maintenance_due(1)  # once per plan item and interval
    types = sorted(Event.objects.values_list("type", flat=True))
    assert types == sorted(
        ["fault.reported", "use.started", "use.ended", "check.required", "maintenance.due", "authorization.expiring"]
    )
    deliver()
    by_event = {r.event: r.body["data"] for r in receiver.received}
    assert all(r.valid for r in receiver.received)
    assert by_event["fault.reported"]["description"] == "smoke" and "reporter" not in by_event["fault.reported"]
    assert by_event["maintenance.due"]["plan"]["description"] == "Clean the lens"
    assert by_event["authorization.expiring"]["member"]["first_name"] == "Sam"


# --- failures: retried with backoff, given up after 24 h -----------------------------------------------------------


def test_errors_are_retried_with_backoff_and_given_up_after_a_day(
    lab: Lab, receiver: Receiver, db: None, settings: Settings
) -> None:
    receiver.status = 500
    subscribe(receiver, ["machine.blocked"])
    with time_machine.travel(timezone.now(), tick=True) as traveller:
        outbox.machines_blocked([lab.laser], blocked=True)
        delivery.dispatch()
        row = Delivery.objects.get()
        first = row.first_attempt_at
        attempts_at: list[datetime] = []
        while row.status == Delivery.Status.PENDING:
            assert delivery.deliver_due() == 1
            row.refresh_from_db()
            assert row.last_attempt_at is not None
            attempts_at.append(row.last_attempt_at)
            assert delivery.deliver_due() == 0  # not again before its time
            if row.next_attempt_at is not None:
                traveller.move_to(row.next_attempt_at)
    assert row.status == Delivery.Status.FAILED and row.response_code == 500 and row.last_error == "HTTP 500"
    gaps = [(b - a).total_seconds() for a, b in zip(attempts_at, attempts_at[1:], strict=False)]
    assert gaps[:4] == pytest.approx([30, 60, 120, 240], abs=1)
    assert max(gaps) == pytest.approx(3600, abs=1)
    assert attempts_at[-1] - first <= timedelta(hours=24) < attempts_at[-1] - first + timedelta(hours=1)
    assert row.attempts == len(receiver.received) == len(attempts_at)
    assert all(r.valid for r in receiver.received)  # a fresh timestamp and signature on each attempt


def test_timeouts_and_refused_connections_are_retried(
    lab: Lab, receiver: Receiver, db: None, settings: Settings
) -> None:
    settings.WEBHOOK_TIMEOUT = 0.5
    subscribe(receiver, ["machine.unblocked"])
    Subscription.objects.create(url=f"http://127.0.0.1:{free_port()}/nobody", events=["machine.unblocked"])
    receiver.hang.set()
    outbox.machines_blocked([lab.laser], blocked=False)
    deliver()
    slow, refused = Delivery.objects.order_by("subscription_id")
    assert (slow.status, slow.attempts, slow.response_code) == ("pending", 1, None)
    assert slow.last_error == "no answer within 0.5 s"
    assert refused.status == "pending" and refused.last_error.startswith("ConnectionError")
    assert refused.next_attempt_at and refused.last_attempt_at
    assert refused.next_attempt_at - refused.last_attempt_at == timedelta(seconds=30)
    receiver.hang.clear()
    receiver.release.set()
    delivery.send_again(Delivery.objects.filter(pk=slow.pk))
    delivery.deliver_due()
    slow.refresh_from_db()
    assert (slow.status, slow.response_code) == ("delivered", 200)


def test_a_forged_or_old_request_is_rejected_by_the_documented_check() -> None:
    body = b'{"event":"use.started"}'
    now = int(time.time())
    good = {"X-Fabomatic-Timestamp": str(now), "X-Fabomatic-Signature": delivery.sign("s3cret", now, body)}
    assert verify("s3cret", good, body)
    assert not verify("other", good, body)
    assert not verify("s3cret", good, body + b" ")
    old = {"X-Fabomatic-Timestamp": str(now - 600), "X-Fabomatic-Signature": delivery.sign("s3cret", now - 600, body)}
    assert not verify("s3cret", old, body)


def test_the_worker_command_and_the_purge(lab: Lab, receiver: Receiver, db: None, settings: Settings) -> None:
    subscribe(receiver, ["machine.blocked"])
    outbox.machines_blocked([lab.laser], blocked=True)
    call_command("deliver_webhooks", "--once")
    assert receiver.events() == ["machine.blocked"]
    Delivery.objects.update(first_attempt_at=timezone.now() - timedelta(days=31))
    Event.objects.update(created_at=timezone.now() - timedelta(days=31))
    call_command("purge", "--progress", "none")
    assert not Delivery.objects.exists() and not Event.objects.exists()


# --- the portal ---------------------------------------------------------------------------------------------------

ADD = reverse("admin:integrations_subscription_add")


@pytest.fixture
def boss_client(boss: Member) -> Client:
    client = Client()
    client.force_login(boss)
    return client


def test_only_portal_administrators_manage_webhooks(lab: Lab, db: None) -> None:
    staff = Member.objects.create_user(
        email="tech@lab.test", first_name="Tech", role=Role.objects.get(name="STAFF"), is_staff=True
    )
    client = Client()
    client.force_login(staff)
    for url in (
        ADD,
        reverse("admin:integrations_subscription_changelist"),
        reverse("admin:integrations_delivery_changelist"),
    ):
        assert client.get(url).status_code == 403, url
    assert client.post(ADD, {"url": "https://x.test/", "events": ["use.started"], "active": "on"}).status_code == 403
    assert not Subscription.objects.exists()


def test_creating_a_webhook_shows_its_secret_once_and_is_audited(
    boss_client: Client, lab: Lab, settings: Settings
) -> None:
    settings.WEBHOOK_ALLOW_HTTP = False
    refused = boss_client.post(ADD, {"url": "http://lan.test/hook", "events": ["use.started"], "active": "on"})
    assert refused.status_code == 200 and "must start with https://" in refused.content.decode()
    response = boss_client.post(
        ADD, {"url": "https://chat.test/hook", "events": ["use.started", "fault.reported"], "active": "on"}
    )
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    sub = Subscription.objects.get()
    shown = re.search(r'<code class="fab-secret" id="webhook-secret">([^<]+)</code>', response.content.decode())
    assert shown is not None and shown.group(1) == sub.secret
    assert sub.events == ["use.started", "fault.reported"]
    page = boss_client.get(reverse("admin:integrations_subscription_change", args=[sub.pk])).content.decode()
    assert sub.secret not in page
    entry = LogEntry.objects.get_for_object(sub).get()
    assert "secret" not in entry.changes_dict and "url" in entry.changes_dict
    boss_client.post(reverse("admin:integrations_subscription_delete", args=[sub.pk]), {"post": "yes"})
    assert not Subscription.objects.exists()
    assert LogEntry.objects.filter(object_pk=str(sub.pk), action=LogEntry.Action.DELETE).exists()


def test_blocking_in_the_portal_and_sending_again(boss_client: Client, lab: Lab, receiver: Receiver) -> None:
    sub = subscribe(receiver, ["machine.blocked", "machine.unblocked"])
    changelist = reverse("admin:machines_machine_changelist")
    boss_client.post(changelist, {"action": "block", "_selected_action": [1]})
    assert Machine.objects.get(pk=1).blocked
    deliver()
    assert receiver.events() == ["machine.blocked"]
    row = Delivery.objects.get()
    log = boss_client.get(reverse("admin:integrations_delivery_changelist")).content.decode()
    assert "machine blocked" in log and "200" in log
    boss_client.post(
        reverse("admin:integrations_delivery_changelist"), {"action": "send_again", "_selected_action": [row.pk]}
    )
    deliver()
    assert receiver.events() == ["machine.blocked", "machine.blocked"]
    assert LogEntry.objects.get_for_object(sub).filter(action=LogEntry.Action.UPDATE).exists()


def test_erasing_a_member_erases_the_events_that_name_them(lab: Lab, receiver: Receiver, db: None) -> None:
    from machines import services
    from members.gdpr import erase_member

    subscribe(receiver)
    now = timezone.now()
    services.begin_use(member=lab.normal, machine_id=1, started_at=now, last_seen=now)
    services.begin_use(member=lab.staff, machine_id=2, started_at=now, last_seen=now)
    outbox.unknown_card("aabbccd3", 2, now)  # Nina's card, swiped where it was not known as hers
    delivery.dispatch()
    erase_member(lab.normal)
    assert "Nina" not in str(list(Event.objects.values_list("data", flat=True)))
    assert "aabbccd3" not in str(list(Event.objects.values_list("data", flat=True)))
    assert list(Event.objects.values_list("type", flat=True)) == ["use.started"]  # Sam's
    assert Delivery.objects.count() == 1


def test_a_correction_in_the_portal_can_make_maintenance_due(lab: Lab, receiver: Receiver, db: None) -> None:
    from machines import services

    subscribe(receiver, ["maintenance.due"])
    start = timezone.now() - timedelta(hours=12)
    use = services.register_use(
        member=lab.normal, machine=lab.laser, started_at=start, ended_at=start + timedelta(hours=9)
    )
    assert not Event.objects.exists()
    services.correct_use(use, started_at=start, ended_at=start + timedelta(hours=10, minutes=30))  # recounted: due
    services.correct_use(use, started_at=start, ended_at=start + timedelta(hours=11))  # the same interval: no more
    assert [e.data["plan"]["description"] for e in Event.objects.all()] == ["Clean the lens"]


def test_a_hanging_receiver_costs_one_timeout_per_pass_not_the_others_turn(
    lab: Lab, receiver: Receiver, db: None, settings: Settings
) -> None:
    settings.WEBHOOK_TIMEOUT = 0.5
    healthy = Receiver().start()
    try:
        Subscription.objects.create(url=receiver.url, events=["machine.blocked"])
        subscribe(healthy, ["machine.blocked"])
        receiver.hang.set()
        outbox.machines_blocked([lab.laser, lab.printer, lab.laser], blocked=True)
        delivery.dispatch()
        assert delivery.deliver_due() == 4
        assert len(receiver.received) == 1  # the first one timed out: its other two wait for the next pass
        assert healthy.events() == ["machine.blocked"] * 3
    finally:
        healthy.stop()


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_as_deployed_bridge_and_worker_processes(lab: Lab, broker: Broker, receiver: Receiver) -> None:
    """``mqtt_listen`` and ``deliver_webhooks`` as the Procfile starts them, each a process of its own: a board's use
    reaches the receiver, and SIGTERM stops the worker cleanly."""
    subscribe(receiver, ["use.started", "use.ended"])
    bridge = spawn_bridge(broker, "webhooks")
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}", "WEBHOOK_ALLOW_HTTP": "1"}
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "deliver_webhooks", "--interval", "0.1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    board = SimBoard(broker.port, 1)
    try:
        assert ask_until_answered(board, {"action": "startuse", "uid": N})["request_ok"] is True
        assert board.ask({"action": "stopuse", "uid": N, "duration": 0})["request_ok"] is True
        deadline = time.monotonic() + 20
        while len(receiver.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert receiver.events() == ["use.started", "use.ended"] and all(r.valid for r in receiver.received)
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=20)
        assert worker.returncode == 0, output.decode()
    finally:
        board.close()
        for proc in (worker, bridge):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(20)
