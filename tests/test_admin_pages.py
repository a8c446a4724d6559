"""Every portal page renders for a superuser and is refused to anonymous users and to members without portal access."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin
from django.contrib.auth.models import Group
from django.db.models import Model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from api.models import ApiToken
from integrations.models import Delivery, Event, Subscription
from machines.models import (
    FaultReport,
    Intervention,
    KioskScreen,
    Machine,
    MachineCheck,
    MachineType,
    MaintenancePlan,
    Refusal,
    Use,
)
from members.models import Card, Member, UnknownCard
from telemetry.models import Board, FirmwareImage, OtaPush, Rollout

from .conftest import Lab

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_passwords")]


MODELS = sorted(admin.site._registry, key=lambda m: m._meta.label)


@pytest.fixture
def history(lab: Lab) -> Lab:
    now = timezone.now()
    Use.objects.create(
        member=lab.normal, machine=lab.laser, started_at=now - timedelta(hours=2), ended_at=now - timedelta(hours=1),
        last_seen=now - timedelta(hours=1), duration=3600,
    )  # fmt: skip
    Use.objects.create(member=lab.staff, machine=lab.printer, started_at=now, last_seen=now, replay=True)
    Intervention.objects.create(plan=lab.plan, machine=lab.laser, member=lab.staff, machine_hours=1.0, replay=True)
    UnknownCard.objects.create(uid="deadbeef", machine=lab.printer)
    FaultReport.objects.create(machine=lab.laser, severity=FaultReport.Severity.OUT_OF_ORDER, description="Smoke")
    MachineCheck.objects.create(machine=lab.laser, requested_at=now)
    Refusal.objects.create(machine=lab.laser, member=lab.normal, uid="aabbccd3", reason=Refusal.Reason.EXPIRED)
    Board.objects.create(machine=lab.laser, serial="ABC", firmware="1.2.3", ip_address="10.0.0.5")
    image = FirmwareImage.objects.create(environment="e", version="1.2.4", data=b"\xe9", md5="0" * 32, size=1)
    OtaPush.objects.create(rollout=Rollout.objects.create(image=image), machine=lab.laser)
    Group.objects.create(name="desk")
    KioskScreen.objects.create(name="Entrance TV", token_hash="0" * 64, created_by=lab.admin)
    hook = Subscription.objects.create(url="https://chat.test/hook", events=["use.started"])
    event = Event.objects.create(type="use.started", data={"use": 1})
    Delivery.objects.create(event=event, subscription=hook, response_code=500, last_error="HTTP 500")
    ApiToken.objects.create(name="Booking tool", token_hash="1" * 64, owner=lab.admin)
    seen = {"user_agent": "x", "http_accept": "x", "path_info": "/admin/login/", "username": "x@lab.test"}
    AccessAttempt.objects.create(**seen, get_data="", post_data="", failures_since_start=1)
    AccessLog.objects.create(**seen)
    AccessFailureLog.objects.create(**seen)
    return lab


def _admin_url(model: type[Model], view: str, *args: object) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m._meta.label)
def test_it_renders_every_changelist_search_add_and_change_page(admin_client: Client, history: Lab, model) -> None:
    model_admin = admin.site._registry[model]
    assert admin_client.get(_admin_url(model, "changelist")).status_code == 200
    assert admin_client.get(_admin_url(model, "changelist"), {"q": "x"}).status_code == 200
    add = admin_client.get(_admin_url(model, "add"))
    assert add.status_code == (200 if model_admin.has_add_permission(add.wsgi_request) else 403)
    obj = model._default_manager.order_by("pk").first()
    assert obj is not None, f"fixture has no {model._meta.label}"
    assert admin_client.get(_admin_url(model, "change", obj.pk)).status_code == 200


def test_it_renders_the_site_index_with_the_fab_o_matic_brand(admin_client: Client, history: Lab) -> None:
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert "Fab-O-Matic" in page
    assert 'action="/i18n/setlang/"' in page


def test_the_login_page_asks_for_the_e_mail_and_offers_password_reset(client: Client) -> None:
    page = client.get(reverse("admin:login")).content.decode()
    assert 'type="email" name="username"' in page
    assert reverse("admin_password_reset") in page
    assert "Forgotten your password?" in page
    assert "Fab-O-Matic" in page


def _refused(client: Client, history: Lab) -> None:
    for model in MODELS:
        obj = model._default_manager.order_by("pk").first()
        assert obj is not None, f"fixture has no {model._meta.label}"
        for url in (_admin_url(model, "changelist"), _admin_url(model, "add"), _admin_url(model, "change", obj.pk)):
            response = client.get(url)
            assert response.status_code == 302, url
            assert response["Location"].startswith(reverse("admin:login")), url
    assert client.get(reverse("admin:index")).status_code == 302


def test_anonymous_visitors_are_sent_to_the_login_page(client: Client, history: Lab) -> None:
    _refused(client, history)


def test_members_without_portal_access_are_refused(client: Client, history: Lab) -> None:
    client.force_login(history.normal)  # a card holder, whatever the role, has no is_staff
    _refused(client, history)
    client.force_login(history.admin)  # even a role that authorizes every machine
    _refused(client, history)


def test_the_language_switch_turns_the_portal_italian(admin_client: Client, history: Lab) -> None:
    response = admin_client.post("/i18n/setlang/", {"language": "it", "next": "/admin/machines/machine/"})
    assert response.status_code == 302
    page = admin_client.get("/admin/machines/machine/").content.decode()
    assert '<html lang="it"' in page


def test_the_remote_buttons_refuse_get(admin_client: Client, history: Lab) -> None:
    url = reverse("admin:machines_machine_remote", args=[history.laser.pk, "start"])
    assert admin_client.get(url).status_code == 405


def test_the_admin_smoke_list_covers_every_model() -> None:
    labels = {m._meta.label for m in MODELS}
    assert {"members.Member", "members.Role", "members.Card", "members.UnknownCard"} <= labels
    assert {"machines.Machine", "machines.MachineType", "machines.Use", "machines.Intervention"} <= labels
    assert {"machines.MaintenancePlan", "machines.Authorization", "telemetry.Board"} <= labels
    assert Member.USERNAME_FIELD == "email"


def test_lists_cost_the_same_number_of_queries_whatever_the_number_of_rows(admin_client: Client, history: Lab) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    urls = [_admin_url(m, "changelist") for m in MODELS if m._meta.app_label in ("members", "machines", "telemetry")]

    def cost() -> dict[str, int]:
        counts = {}
        for url in urls:
            with CaptureQueriesContext(connection) as queries:
                assert admin_client.get(url).status_code == 200
            counts[url] = len(queries)
        return counts

    before = cost()
    now = timezone.now()
    for i in range(15):
        kind = MachineType.objects.create(name=f"Type {i}")
        machine = Machine.objects.create(id=100 + i, name=f"MACHINE {i}", type=kind)
        MaintenancePlan.objects.create(machine=machine, hours_between=10, description=f"Plan {i}")
        Board.objects.create(machine=machine, serial=f"S{i}")
        member = Member.objects.create_user(email=f"member{i}@lab.test", first_name=f"M{i}", role=history.normal.role)
        Card.objects.create(uid=f"{0x10000000 + i:08x}", member=member)
        Use.objects.create(member=member, machine=machine, started_at=now, last_seen=now)
        Intervention.objects.create(plan=history.plan, machine=history.laser, member=member)
        UnknownCard.objects.create(uid=f"{0xE0000000 + i:08x}", machine=machine)
    assert cost() == before
