"""Training lifecycle in the portal (issue 12, items 1 and 2): trainers grant only for the machines they train (the
member page's inline, the machine page's inline, the bulk action, the authorizations list, a forged POST), with
who trained and when it expires; expiring and expired trainings are listed and renewed (confirmed, audited);
sign-off at the machine is armed only by trainers and shows who was trained."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from auditlog.models import LogEntry as AuditEntry
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from machines import safety
from machines.models import Authorization, Machine, MachineType, TrainingArm
from members.models import Member, Role

from .conftest import Lab

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_passwords")]

MEMBERS = reverse("admin:members_member_changelist")
AUTHORIZATIONS = reverse("admin:machines_authorization_changelist")
ADD_AUTHORIZATION = reverse("admin:machines_authorization_add")
PASSWORD = "a-trainer-password-42"


@pytest.fixture
def cnc(lab: Lab) -> Machine:
    """Machine B, of another type than the laser (type A, T1)."""
    return Machine.objects.create(id=3, name="CNC", type=MachineType.objects.create(name="Mills"))


@pytest.fixture
def tina(lab: Lab) -> Member:
    """A trainer of the laser's type (T1) only, with a role that grants no portal administration; the lab ticked
    her the right to change members and machines by hand (so the inlines and the bulk action are open to her)."""
    tina = Member.objects.create_user(
        email="tina@lab.test",
        password=PASSWORD,
        first_name="Tina",
        role=Role.objects.get(name="STAFF"),
        is_staff=True,
    )
    lab.laser.type.trainers.add(tina)
    tina.user_permissions.add(
        *Permission.objects.filter(codename__in=["change_member", "change_machine", "change_card"])
    )
    return tina


@pytest.fixture
def trainer(tina: Member) -> Client:
    client = Client()
    client.force_login(tina)
    return client


def audited(obj: object, word: str) -> bool:
    """An audit-trail entry of ``obj`` whose message says ``word``."""
    entries = AuditEntry.objects.get_for_object(obj)
    return any(word in (entry.additional_data or {}).get("message", "") for entry in entries)


def member_form(member: Member, rows: list[dict[str, object]]) -> dict[str, object]:
    """The member page as the browser posts it, with new authorization rows."""
    data: dict[str, object] = {
        "first_name": member.first_name,
        "last_name": member.last_name,
        "email": member.email or "",
        "role": member.role_id,
        "training_reminders": "on",
        "language": "",
        "cards-TOTAL_FORMS": 0,
        "cards-INITIAL_FORMS": 0,
        "authorizations-TOTAL_FORMS": len(rows),
        "authorizations-INITIAL_FORMS": 0,
        "_save": "Save",
    }
    for i, row in enumerate(rows):
        data.update({f"authorizations-{i}-{key}": value for key, value in row.items()})
    return data


def test_a_trainer_grants_on_the_member_page_only_the_machines_they_train(
    trainer: Client, lab: Lab, tina: Member, cnc: Machine
) -> None:
    url = reverse("admin:members_member_change", args=[lab.unauthorized.pk])
    page = trainer.get(url).content.decode()
    assert "LASER 1 (T1)" in page and "CNC (Mills)" not in page  # only trainable machines are offered

    forged = trainer.post(url, member_form(lab.unauthorized, [{"machine": cnc.pk}]))
    assert forged.status_code == 200  # the form again, with the error
    assert not Authorization.objects.filter(member=lab.unauthorized).exists()

    assert trainer.post(url, member_form(lab.unauthorized, [{"machine": lab.laser.pk}])).status_code == 302
    granted = Authorization.objects.get(member=lab.unauthorized)
    assert granted.machine == lab.laser and granted.trained_by == tina and granted.expires_at is None

    # Removing a row of a machine she does not train is refused too.
    theirs = Authorization.objects.create(member=lab.unauthorized, machine=cnc)
    rows = Authorization.objects.filter(member=lab.unauthorized).order_by("pk")
    data = member_form(lab.unauthorized, [])
    data.update({"authorizations-TOTAL_FORMS": 2, "authorizations-INITIAL_FORMS": 2})
    for i, row in enumerate(rows):
        data.update({f"authorizations-{i}-id": row.pk, f"authorizations-{i}-member": lab.unauthorized.pk})
    data["authorizations-1-DELETE"] = "on"
    refused = trainer.post(url, data)
    assert refused.status_code == 200 and "its authorizations stay" in refused.content.decode()
    assert Authorization.objects.filter(pk=theirs.pk).exists()
    del data["authorizations-1-DELETE"]
    data["authorizations-0-DELETE"] = "on"
    response = trainer.post(url, data)
    assert response.status_code == 302, response.context["errors"]
    assert not Authorization.objects.filter(pk=granted.pk).exists()  # hers to remove


def test_a_rule_chosen_when_granting_overrides_the_types(trainer: Client, lab: Lab, tina: Member) -> None:
    lab.laser.type.training_expiry, lab.laser.type.training_days = "after_days", 365
    lab.laser.type.save()
    url = reverse("admin:members_member_change", args=[lab.unauthorized.pk])
    missing = trainer.post(url, member_form(lab.unauthorized, [{"machine": lab.laser.pk, "rule": "idle_days"}]))
    assert missing.status_code == 200 and "This rule needs a number of days." in missing.content.decode()
    row = {"machine": lab.laser.pk, "rule": "idle_days", "days": 30}
    assert trainer.post(url, member_form(lab.unauthorized, [row])).status_code == 302
    granted = Authorization.objects.get(member=lab.unauthorized)
    assert granted.expiry == "idle_days" and granted.expiry_days == 30
    assert granted.expires_at is not None
    assert abs((granted.expires_at - timezone.now()) - timedelta(days=30)) < timedelta(minutes=1)

    page = trainer.get(url).content.decode()  # trained by, and when it lapses, on the member page
    assert "Tina" in page and "after 30 days unused" in page


def test_the_machine_page_inline_is_closed_to_a_trainer_of_another_machine(
    trainer: Client, lab: Lab, cnc: Machine
) -> None:
    url = reverse("admin:machines_machine_change", args=[cnc.pk])
    data = {
        "name": cnc.name,
        "type": cnc.type_id,
        "hours": "0",
        "plans-TOTAL_FORMS": 0,
        "plans-INITIAL_FORMS": 0,
        "authorizations-TOTAL_FORMS": 1,
        "authorizations-INITIAL_FORMS": 0,
        "authorizations-0-member": lab.unauthorized.pk,
        "board-TOTAL_FORMS": 0,
        "board-INITIAL_FORMS": 0,
        "_save": "Save",
    }
    trainer.post(url, data)
    assert not Authorization.objects.filter(machine=cnc).exists()
    data.update(name=lab.laser.name, type=lab.laser.type_id)
    url = reverse("admin:machines_machine_change", args=[lab.laser.pk])
    assert trainer.post(url, data).status_code == 302
    assert Authorization.objects.get(machine=lab.laser, member=lab.unauthorized).trained_by is not None


def test_the_bulk_action_offers_and_accepts_only_trainable_machines(
    trainer: Client, lab: Lab, tina: Member, cnc: Machine
) -> None:
    base = {"action": "grant_revoke_machines", "_selected_action": [lab.unauthorized.pk]}
    page = trainer.post(MEMBERS, base).content.decode()
    assert "LASER 1" in page and "CNC" not in page
    forged = trainer.post(MEMBERS, {**base, "apply": "1", "operation": "grant", "machines": [cnc.pk]})
    assert forged.status_code == 200 and not Authorization.objects.filter(machine=cnc).exists()
    response = trainer.post(MEMBERS, {**base, "apply": "1", "operation": "grant", "machines": [lab.laser.pk]})
    assert response.status_code == 302
    assert Authorization.objects.get(member=lab.unauthorized).trained_by == tina

    Authorization.objects.create(member=lab.unauthorized, machine=cnc)
    trainer.post(MEMBERS, {**base, "apply": "1", "operation": "revoke", "machines": [cnc.pk]})
    assert Authorization.objects.filter(member=lab.unauthorized, machine=cnc).exists()  # not hers to revoke


def test_the_authorizations_list_grants_only_trainable_machines(
    trainer: Client, admin_client: Client, lab: Lab, cnc: Machine
) -> None:
    forged = trainer.post(ADD_AUTHORIZATION, {"member": lab.unauthorized.pk, "machine": cnc.pk})
    assert forged.status_code == 200 and not Authorization.objects.filter(machine=cnc).exists()
    assert trainer.post(ADD_AUTHORIZATION, {"member": lab.unauthorized.pk, "machine": lab.laser.pk}).status_code == 302
    # A portal administrator trains on every machine.
    assert admin_client.post(ADD_AUTHORIZATION, {"member": lab.unauthorized.pk, "machine": cnc.pk}).status_code == 302
    assert Authorization.objects.get(machine=cnc).trained_by is not None


def test_a_type_with_an_expiring_training_needs_its_days(admin_client: Client, lab: Lab) -> None:
    url = reverse("admin:machines_machinetype_change", args=[lab.laser.type_id])
    data = {"name": "T1", "logoff_minutes": 1440, "grace_minutes": 2, "requires_authorization": "on"}
    response = admin_client.post(url, {**data, "training_expiry": "after_days", "training_days": ""})
    assert response.status_code == 200 and "This rule needs a number of days." in response.content.decode()
    assert admin_client.post(url, {**data, "training_expiry": "after_days", "training_days": 90}).status_code == 302
    lab.laser.type.refresh_from_db()
    assert (lab.laser.type.training_expiry, lab.laser.type.training_days) == ("after_days", 90)


def test_only_portal_administrators_name_trainers(trainer: Client, lab: Lab, tina: Member, cnc: Machine) -> None:
    tina.user_permissions.add(Permission.objects.get(codename="change_machinetype"))
    url = reverse("admin:machines_machinetype_change", args=[cnc.type_id])
    data = {"name": "Mills", "logoff_minutes": 1440, "grace_minutes": 2, "training_expiry": "never"}
    trainer.post(url, {**data, "trainers": [tina.pk]})
    assert not cnc.type.trainers.exists()
    machine = {"name": "CNC", "type": cnc.type_id, "hours": "0", "trainers": [tina.pk], "_save": "Save"}
    for inline in ("plans", "authorizations", "board"):
        machine.update({f"{inline}-TOTAL_FORMS": 0, f"{inline}-INITIAL_FORMS": 0})
    assert trainer.post(reverse("admin:machines_machine_change", args=[cnc.pk]), machine).status_code == 302
    assert not cnc.trainers.exists() and not safety.may_train(tina, cnc)


def _expiring(lab: Lab, cnc: Machine) -> tuple[Authorization, Authorization, Authorization]:
    now = timezone.now()
    expired = safety.grant(lab.normal, lab.laser, by=None, now=now - timedelta(days=40), expiry="after_days", days=30)
    soon = safety.grant(
        lab.unauthorized, lab.laser, by=None, now=now - timedelta(days=20), expiry="after_days", days=30
    )
    other = safety.grant(lab.unauthorized, cnc, by=None, now=now - timedelta(days=40), expiry="after_days", days=30)
    return expired, soon, other


def test_expiring_and_expired_are_listed_per_member_per_machine_and_filtered(
    admin_client: Client, lab: Lab, cnc: Machine
) -> None:
    expired, soon, other = _expiring(lab, cnc)
    member_page = admin_client.get(reverse("admin:members_member_change", args=[lab.normal.pk])).content.decode()
    panel = member_page[member_page.index('id="training-due"') :]
    assert "LASER 1" in panel and "expired" in panel
    machine_page = admin_client.get(reverse("admin:machines_machine_change", args=[lab.laser.pk])).content.decode()
    panel = machine_page[machine_page.index('id="training-due"') :]
    assert "Nina" in panel and "Ugo" in panel and "expiring soon" in panel
    assert reverse("machines_sign_off") in panel

    def listed(**params: str | int) -> set[int]:
        response = admin_client.get(AUTHORIZATIONS, params)
        return {a.pk for a in response.context["cl"].result_list}

    assert listed(training="expired") == {expired.pk, other.pk}
    assert listed(training="soon") == {soon.pk}
    assert listed(training="expired", machine__id__exact=cnc.pk) == {other.pk}
    lab.staff.is_staff = True
    lab.staff.save()
    safety.renew(Authorization.objects.filter(pk=other.pk), by=lab.staff)
    assert listed(trained_by__id__exact=lab.staff.pk) == {other.pk}


def test_bulk_renewal_is_confirmed_audited_and_limited_to_trainable_machines(
    trainer: Client, lab: Lab, tina: Member, cnc: Machine
) -> None:
    expired, soon, other = _expiring(lab, cnc)
    form = {"action": "renew_selected", "_selected_action": [expired.pk, soon.pk, other.pk]}
    page = trainer.post(AUTHORIZATIONS, form)
    assert page.status_code == 200
    text = page.content.decode()
    assert "Yes, renew them" in text and "Nina" in text and "CNC" not in text
    assert Authorization.objects.get(pk=expired.pk).is_expired()  # nothing before the confirmation

    assert trainer.post(AUTHORIZATIONS, {**form, "post": "yes"}).status_code == 302
    for renewed in Authorization.objects.filter(pk__in=[expired.pk, soon.pk]):
        assert renewed.trained_by == tina and not renewed.is_expired()
        assert renewed.expires_at is not None and renewed.expires_at > timezone.now() + timedelta(days=29)
        assert audited(renewed, "renewed")
    assert Authorization.objects.get(pk=other.pk).is_expired()  # machine B: not hers
    assert Authorization.objects.get(pk=other.pk).trained_by is None


def test_sign_off_is_armed_only_by_trainers_and_shows_the_trainee(
    trainer: Client, lab: Lab, tina: Member, cnc: Machine
) -> None:
    refused = trainer.post(reverse("machines_sign_off_arm", args=[cnc.pk]))
    assert refused.status_code == 403 and "not a trainer of CNC" in refused.content.decode()
    assert not TrainingArm.objects.exists()
    assert trainer.get(reverse("machines_sign_off_status", args=[cnc.pk])).status_code == 403
    assert trainer.get(reverse("machines_sign_off"), {"machine": cnc.pk}).status_code == 403

    page = trainer.get(reverse("machines_sign_off")).content.decode()
    assert "LASER 1" in page and "CNC" not in page
    assert trainer.post(reverse("machines_sign_off_arm", args=[lab.laser.pk])).status_code == 302
    status = trainer.get(reverse("machines_sign_off_status", args=[lab.laser.pk])).json()
    assert status["state"] == "armed" and 55 <= status["seconds_left"] <= 60
    assert audited(lab.laser, "armed")

    granted = safety.sign_off(lab.laser, lab.unauthorized)  # the trainee's swipe, as the bridge calls it
    assert granted is not None and granted.trained_by == tina
    status = trainer.get(reverse("machines_sign_off_status", args=[lab.laser.pk])).json()
    assert status["state"] == "trained" and status["trainee"] == "Ugo Test"

    trainer.post(reverse("machines_sign_off_arm", args=[lab.laser.pk]))
    assert trainer.post(reverse("machines_sign_off_disarm", args=[lab.laser.pk])).status_code == 302
    assert trainer.get(reverse("machines_sign_off_status", args=[lab.laser.pk])).json()["state"] == "ended"
    assert safety.sign_off(lab.laser, lab.disabled) is None
    assert audited(lab.laser, "disarmed")


def test_the_sign_off_page_is_in_the_navigation_of_trainers_only(trainer: Client, lab: Lab) -> None:
    assert reverse("machines_sign_off") in trainer.get(reverse("admin:index")).content.decode()
    lab.staff.is_staff = True
    lab.staff.set_password(PASSWORD)
    lab.staff.save()
    other = Client()
    other.force_login(lab.staff)
    assert reverse("machines_sign_off") not in other.get(reverse("admin:index")).content.decode()
    assert other.post(reverse("machines_sign_off_arm", args=[lab.laser.pk])).status_code == 403


@pytest.mark.parametrize("hour", [1, 9, 23])
def test_renewing_a_date_rule_keeps_as_many_days_whatever_the_hour(lab: Lab, hour: int) -> None:
    """Trained on 10 January until 31 March (80 days on): renewed on 30 November, valid until 18 February."""
    zone = timezone.get_current_timezone()
    trained = timezone.make_aware(datetime(2026, 1, 10, 10, 0), zone)
    authorization = safety.grant(
        lab.unauthorized, lab.laser, by=None, now=trained, expiry="on_date", on_date=date(2026, 3, 31)
    )
    renewed_at = timezone.make_aware(datetime(2026, 11, 30, hour, 30), zone)
    safety.renew(Authorization.objects.filter(pk=authorization.pk), by=lab.staff, now=renewed_at)
    authorization.refresh_from_db()
    assert authorization.expiry == "on_date" and authorization.granted_at == renewed_at
    assert authorization.expires_at == safety.end_of_day(date(2027, 2, 18))
