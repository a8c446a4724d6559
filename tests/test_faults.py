"""Fault reports from the QR sticker, checks after use and refusals, portal side (issue 12, items 3-5): the public
report page (404 for a wrong code, CSRF, rate limit, honeypot), staff's mail once per out-of-order report in each
recipient's language, closing and confirming in the portal (confirmed, audited, live tiles), the sticker, the
refusal lists, and the purge and erasure of these records."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django import Settings

from machines import faults, safety
from machines.dashboard import tiles
from machines.models import FaultReport, Machine, MachineCheck, Refusal, Use
from members.gdpr import erase_member, purge
from members.models import Member
from operations import audit

from .conftest import Lab
from .test_portal_live import dashboard_channel, next_tile  # noqa: F401 (a fixture)

OUT = FaultReport.Severity.OUT_OF_ORDER
MINOR = FaultReport.Severity.MINOR


@pytest.fixture(autouse=True)
def _mail_at_once(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """The page mails from a background thread, which cannot see this test's uncommitted rows: here at once."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    monkeypatch.setattr(faults, "queue_staff_mail", faults.send_staff_mail)


@pytest.fixture
def maintainers(lab: Lab) -> list[Member]:
    """Sam (maintenance role, Italian) and Alice (admin role, the lab's language) use the portal."""
    Member.objects.filter(pk=lab.staff.pk).update(is_staff=True, language="it")
    Member.objects.filter(pk=lab.admin.pk).update(is_staff=True, language="")
    return [lab.staff, lab.admin]


def report_url(machine: Machine) -> str:
    machine.refresh_from_db()
    return reverse("fault_report", args=[machine.report_token])


def send(client: Client, machine: Machine, *, severity: str = OUT, ip: str = "10.0.0.7", **extra: str):
    form = {"description": "The lens is cracked", "severity": severity, "reporter": "", "website": "", **extra}
    return client.post(report_url(machine), form, REMOTE_ADDR=ip)


# --- the public page ------------------------------------------------------------------------------


def test_a_wrong_code_is_a_plain_404(client: Client, lab: Lab) -> None:
    for path in ("/report/not-the-code/", f"/report/{lab.laser.pk}/", "/report/not-the-code/thanks/"):
        response = client.get(path)
        assert response.status_code == 404
        assert b"LASER" not in response.content
    assert client.post("/report/nope/", {"description": "x", "severity": OUT}).status_code == 404
    assert not FaultReport.objects.exists()


def test_the_page_names_the_machine_and_explains_out_of_order(client: Client, lab: Lab) -> None:
    page = client.get(report_url(lab.laser), HTTP_ACCEPT_LANGUAGE="it").content.decode()
    assert "LASER 1" in page and 'lang="it"' in page
    assert "Fuori servizio" in page and "csrfmiddlewaretoken" in page


def test_the_language_switch_comes_back_to_the_report_page(client: Client, lab: Lab) -> None:
    url = report_url(lab.laser)
    response = client.post("/i18n/setlang/", {"language": "it", "next": url}, HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 302 and response["Location"] == url
    assert "Segnala un guasto" in client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()


def test_csrf_is_checked(lab: Lab) -> None:
    strict = Client(enforce_csrf_checks=True)
    assert send(strict, lab.laser).status_code == 403
    assert not FaultReport.objects.exists()


def test_an_out_of_order_report_locks_and_mails_each_maintainer_once_in_their_language(
    client: Client, lab: Lab, maintainers: list[Member]
) -> None:
    response = send(client, lab.laser, reporter="Nina, 333 1234567", ip="192.0.2.44")
    assert response.status_code == 302 and "/thanks/" in response["Location"]
    fault = FaultReport.objects.get()
    assert (fault.severity, fault.reporter, fault.machine_id) == (OUT, "Nina, 333 1234567", lab.laser.pk)
    assert fault.source == safety.report_source("192.0.2.44") and "192.0.2.44" not in fault.source
    assert "192.0.2.44" not in str(list(audit.entries_for(fault).values()))  # the address is kept nowhere
    assert safety.lock_reason(lab.laser.pk) == Refusal.Reason.FAULT
    by_address = {m.to[0]: m for m in mail.outbox}
    assert sorted(by_address) == ["alice@lab.test", "sam@lab.test"]  # one each, only portal maintainers
    assert by_address["sam@lab.test"].subject == "Fuori servizio: LASER 1"
    assert by_address["alice@lab.test"].subject == "Out of order: LASER 1"
    assert "The lens is cracked" in by_address["sam@lab.test"].body
    assert f"/admin/machines/machine/{lab.laser.pk}/change/" in by_address["alice@lab.test"].body
    thanks = client.get(response["Location"], HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "out of order" in thanks and "LASER 1" in thanks


def test_a_minor_report_mails_nobody_and_does_not_lock(client: Client, lab: Lab, maintainers: list[Member]) -> None:
    assert send(client, lab.laser, severity=MINOR).status_code == 302
    assert FaultReport.objects.get().severity == MINOR
    assert mail.outbox == []
    assert safety.lock_reason(lab.laser.pk) is None


def test_members_who_may_not_maintain_or_use_the_portal_get_no_mail(lab: Lab, maintainers: list[Member]) -> None:
    Member.objects.filter(pk=lab.normal.pk).update(is_staff=True)  # portal user without maintenance
    Member.objects.filter(pk=lab.admin.pk).update(disabled=True)
    assert [m.pk for m in faults.recipients()] == [lab.staff.pk]


def test_the_rate_limit_per_address_answers_429(client: Client, lab: Lab, settings: Settings) -> None:
    settings.FAULT_REPORTS_PER_HOUR = 2
    assert [send(client, lab.laser, severity=MINOR).status_code for _ in range(2)] == [302, 302]
    limited = send(client, lab.laser, severity=MINOR)
    assert limited.status_code == 429 and b"LASER 1" in limited.content
    assert send(client, lab.printer, severity=MINOR).status_code == 429  # per address, whatever the machine
    assert send(client, lab.laser, severity=MINOR, ip="10.0.0.8").status_code == 302  # another address
    FaultReport.objects.update(created_at=timezone.now() - timedelta(minutes=61))
    assert send(client, lab.laser, severity=MINOR).status_code == 302  # an hour later
    assert FaultReport.objects.count() == 4


def test_the_rate_limit_per_machine_answers_429(client: Client, lab: Lab) -> None:
    for i in range(faults.PER_MACHINE_HOUR):
        assert send(client, lab.laser, severity=MINOR, ip=f"10.1.0.{i}").status_code == 302
    assert send(client, lab.laser, severity=MINOR, ip="10.2.0.1").status_code == 429
    assert send(client, lab.printer, severity=MINOR, ip="10.2.0.1").status_code == 302


def test_a_filled_honeypot_stores_nothing(client: Client, lab: Lab, maintainers: list[Member]) -> None:
    assert send(client, lab.laser, website="http://spam.example").status_code == 302
    assert not FaultReport.objects.exists() and mail.outbox == []


def test_a_description_is_required_and_bounded(client: Client, lab: Lab) -> None:
    assert send(client, lab.laser, description="   ").status_code == 200
    assert send(client, lab.laser, description="x" * 2001).status_code == 200
    assert send(client, lab.laser, severity="explode").status_code == 200
    assert not FaultReport.objects.exists()


# --- the portal -----------------------------------------------------------------------------------


def test_the_sticker_is_an_svg_qr_of_the_public_address(admin_client: Client, lab: Lab, settings: Settings) -> None:
    settings.PUBLIC_URL, settings.PUBLIC_URL_SET = "https://fab.example.org", True
    page = admin_client.get(reverse("admin:machines_sticker", args=[lab.laser.pk])).content.decode()
    assert "<svg" in page and "LASER 1" in page
    assert f"https://fab.example.org{report_url(lab.laser)}" in page
    settings.PUBLIC_URL_SET = False
    page = admin_client.get(reverse("admin:machines_sticker", args=[lab.laser.pk])).content.decode()
    assert f"http://testserver{report_url(lab.laser)}" in page


def test_a_new_report_code_is_confirmed_audited_and_voids_the_old_sticker(
    admin_client: Client, client: Client, lab: Lab
) -> None:
    old = report_url(lab.laser)
    url = reverse("admin:machines_machine_report_code", args=[lab.laser.pk])
    assert admin_client.get(url).status_code == 405
    assert admin_client.post(url).status_code == 200  # the confirmation page
    assert report_url(lab.laser) == old
    assert admin_client.post(url, {"post": "yes"}).status_code == 302
    assert report_url(lab.laser) != old
    assert client.get(old).status_code == 404 and client.get(report_url(lab.laser)).status_code == 200
    assert LogEntry.objects.filter(object_id=str(lab.laser.pk), change_message__contains="report code").exists()


def test_closing_faults_from_the_machine_page_unlocks_it(admin_client: Client, lab: Lab) -> None:
    safety.report_fault(lab.laser, severity=OUT, description="Smoke")
    safety.report_fault(lab.laser, severity=MINOR, description="Loose knob")
    page = admin_client.get(reverse("admin:machines_machine_change", args=[lab.laser.pk])).content.decode()
    assert "Smoke" in page and "Loose knob" in page and "Close the fault reports" in page
    url = reverse("admin:machines_machine_close_faults", args=[lab.laser.pk])
    assert admin_client.post(url).status_code == 200
    assert FaultReport.objects.filter(closed_at__isnull=True).count() == 2
    assert admin_client.post(url, {"post": "yes", "note": "New lens fitted"}).status_code == 302
    closed = list(FaultReport.objects.all())
    assert all(f.closed_via == "portal" and f.close_note == "New lens fitted" and f.closed_by for f in closed)
    assert safety.lock_reason(lab.laser.pk) is None
    assert LogEntry.objects.filter(change_message__contains="New lens fitted").count() == 2


def test_the_close_action_of_the_fault_list(admin_client: Client, lab: Lab) -> None:
    keep = safety.report_fault(lab.printer, severity=OUT, description="Jammed")
    fault = safety.report_fault(lab.laser, severity=OUT, description="Smoke")
    url = reverse("admin:machines_faultreport_changelist")
    form = {"action": "close_selected", "_selected_action": [fault.pk]}
    assert admin_client.post(url, form).status_code == 200
    assert admin_client.post(url, {**form, "post": "yes", "note": ""}).status_code == 302
    fault.refresh_from_db()
    keep.refresh_from_db()
    assert not fault.is_open and keep.is_open
    listing = admin_client.get(url + "?open=yes").content.decode()
    assert "Jammed" in listing and "Smoke" not in listing
    page = admin_client.get(reverse("admin:machines_faultreport_change", args=[fault.pk])).content.decode()
    assert "Smoke" in page and 'name="_save"' not in page  # a record: read, closed, never edited


def test_staff_file_a_report_from_the_portal(admin_client: Client, lab: Lab, maintainers: list[Member]) -> None:
    url = reverse("admin:machines_faultreport_add")
    assert f'value="{lab.laser.pk}" selected' in admin_client.get(url + f"?machine={lab.laser.pk}").content.decode()
    response = admin_client.post(url, {"machine": lab.laser.pk, "severity": OUT, "description": "Belt torn"})
    assert response.status_code == 302
    fault = FaultReport.objects.get()
    assert fault.description == "Belt torn" and fault.reporter and fault.source == ""
    assert len(mail.outbox) == 3  # Sam, Alice and the portal's admin


def test_confirming_a_check_from_the_machine_page(admin_client: Client, lab: Lab) -> None:
    now = timezone.now()
    use = Use.objects.create(
        member=lab.normal, machine=lab.laser, started_at=now, ended_at=now, last_seen=now, duration=60
    )
    MachineCheck.objects.create(machine=lab.laser, use=use, requested_at=now)
    page = admin_client.get(reverse("admin:machines_machine_change", args=[lab.laser.pk])).content.decode()
    assert "Confirm checked" in page
    url = reverse("admin:machines_machine_confirm_check", args=[lab.laser.pk])
    assert admin_client.post(url).status_code == 200
    assert safety.lock_reason(lab.laser.pk) == Refusal.Reason.TO_CHECK
    assert admin_client.post(url, {"post": "yes"}).status_code == 302
    check = MachineCheck.objects.get()
    assert check.checked_at is not None and check.checked_via == "portal"
    assert safety.lock_reason(lab.laser.pk) is None


def test_maintainers_close_and_confirm_in_the_portal_and_view_only_staff_may_not(client: Client, lab: Lab) -> None:
    safety.report_fault(lab.laser, severity=OUT, description="Smoke")
    MachineCheck.objects.create(machine=lab.laser, requested_at=timezone.now())
    close = reverse("admin:machines_machine_close_faults", args=[lab.laser.pk])
    check = reverse("admin:machines_machine_confirm_check", args=[lab.laser.pk])
    new_code = reverse("admin:machines_machine_report_code", args=[lab.laser.pk])
    Member.objects.filter(pk__in=[lab.staff.pk, lab.normal.pk]).update(is_staff=True)
    client.force_login(Member.objects.get(pk=lab.normal.pk))  # a portal user whose role has no maintenance
    assert [client.post(url, {"post": "yes"}).status_code for url in (close, check, new_code)] == [403, 403, 403]
    assert client.get(reverse("admin:machines_refusal_changelist")).status_code == 200  # but sees refusals
    assert safety.lock_reason(lab.laser.pk) == Refusal.Reason.FAULT
    client.force_login(Member.objects.get(pk=lab.staff.pk))  # the maintenance role: level 2 at the machine
    assert client.post(new_code, {"post": "yes"}).status_code == 403  # the sticker's code is the admins'
    assert [client.post(url, {"post": "yes"}).status_code for url in (close, check)] == [302, 302]
    assert safety.lock_reason(lab.laser.pk) is None


def test_tiles_show_out_of_order_and_to_check_below_in_use_and_blocked(lab: Lab) -> None:
    now = timezone.now()
    Machine.objects.filter(pk__in=[1, 2]).update(last_seen=now)
    MachineCheck.objects.create(machine=lab.printer, requested_at=now)
    fault = safety.report_fault(lab.laser, severity=OUT, description="Smoke")
    assert {t["id"]: t["state"] for t in tiles.tiles()} == {1: "out_of_order", 2: "to_check"}
    safety.report_fault(lab.printer, severity=OUT, description="Jam")
    assert tiles.locks() == {1: "out_of_order", 2: "out_of_order"}  # the fault first
    Machine.objects.filter(pk=1).update(blocked=True)
    assert tiles.machine_tile(1)["state"] == "blocked"  # type: ignore[index]
    Machine.objects.filter(pk=1).update(blocked=False)
    Use.objects.create(member=lab.normal, machine=lab.laser, started_at=now, last_seen=now)
    assert tiles.machine_tile(1)["state"] == "in_use"  # type: ignore[index]
    safety.close_faults(lab.laser, by=None, via="portal", faults=FaultReport.objects.filter(pk=fault.pk))
    assert tiles.locks([1]) == {}
    assert tiles.tile_state(in_use=False, blocked=False, maintenance=True, online=True, to_check=True) == "to_check"


def test_a_report_a_close_and_a_check_push_the_tile_to_open_dashboards(
    client: Client,
    admin_client: Client,
    lab: Lab,
    dashboard_channel: str,  # noqa: F811 (the fixture imported above)
    django_capture_on_commit_callbacks,
) -> None:
    Machine.objects.filter(pk=lab.laser.pk).update(last_seen=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        send(client, lab.laser)
    assert (next_tile(dashboard_channel)["state"], FaultReport.objects.count()) == ("out_of_order", 1)
    MachineCheck.objects.create(machine=lab.laser, requested_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(reverse("admin:machines_machine_close_faults", args=[lab.laser.pk]), {"post": "yes"})
    assert next_tile(dashboard_channel)["state"] == "to_check"
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(reverse("admin:machines_machine_confirm_check", args=[lab.laser.pk]), {"post": "yes"})
    assert next_tile(dashboard_channel)["state"] == "free"


def test_the_dashboard_lists_open_faults_and_latest_refusals(admin_client: Client, lab: Lab) -> None:
    safety.report_fault(lab.laser, severity=OUT, description="Smoke from the tube")
    safety.record_refusal(lab.laser.pk, Refusal.Reason.FAULT, member_id=lab.normal.pk, uid="aabbccd3")
    Refusal.objects.create(
        machine=lab.printer, reason=Refusal.Reason.UNKNOWN_CARD, at=timezone.now() - timedelta(days=2)
    )
    page = admin_client.get("/admin/").content.decode()
    panel = page[page.index('id="fab-open-faults"') :]
    assert "Smoke from the tube" in panel and "LASER 1" in panel
    refusals = page[page.index('id="fab-refusals"') :]
    assert "out of order (fault report)" in refusals and "Nina Test" in refusals
    assert "unknown card" not in refusals  # older than a day
    assert re.search(r'data-state="out_of_order">\s*<span class="fab-count">1</span>', page)


def test_refusals_on_the_member_and_machine_pages_and_their_read_only_list(admin_client: Client, lab: Lab) -> None:
    safety.record_refusal(lab.laser.pk, Refusal.Reason.EXPIRED, member_id=lab.normal.pk, uid="aabbccd3")
    safety.record_refusal(lab.printer.pk, Refusal.Reason.DISABLED, member_id=lab.disabled.pk, uid="aabbccd5")
    member_page = admin_client.get(reverse("admin:members_member_change", args=[lab.normal.pk])).content.decode()
    assert "training expired" in member_page and "member disabled" not in member_page
    assert f"?member__id__exact={lab.normal.pk}" in member_page
    machine_page = admin_client.get(reverse("admin:machines_machine_change", args=[lab.printer.pk])).content.decode()
    assert "member disabled" in machine_page and "Dario Test" in machine_page
    listing = reverse("admin:machines_refusal_changelist")
    filtered = results(admin_client.get(listing + f"?machine__id__exact={lab.laser.pk}").content.decode())
    assert "training expired" in filtered and "member disabled" not in filtered
    assert "Dario" in results(admin_client.get(listing + "?reason__exact=disabled").content.decode())
    report = admin_client.get(reverse("fabomatic_member_report", args=[lab.normal.pk])).content.decode()
    assert re.search(r"Refusals</th><td>1</td>", report)  # the GDPR data report counts them
    refusal = Refusal.objects.first()
    assert refusal is not None
    assert admin_client.post(reverse("admin:machines_refusal_delete", args=[refusal.pk])).status_code == 403
    assert admin_client.get(reverse("admin:machines_refusal_add")).status_code == 403


def results(page: str) -> str:
    """The rows of a list page, without its filters."""
    return page[page.index('id="result_list"') : page.index("</table>", page.index('id="result_list"'))]


# --- purge and erasure ----------------------------------------------------------------------------


def test_purge_deletes_old_refusals_closed_faults_and_confirmed_checks(lab: Lab, settings: Settings) -> None:
    settings.RETENTION_DAYS, settings.REFUSAL_RETENTION_DAYS = 365, 90
    now = timezone.now()
    old, recent = now - timedelta(days=400), now - timedelta(days=10)
    Refusal.objects.create(machine=lab.laser, reason=Refusal.Reason.NOT_AUTHORIZED, at=now - timedelta(days=91))
    kept_refusal = Refusal.objects.create(machine=lab.laser, reason=Refusal.Reason.FAULT, at=now - timedelta(days=89))
    FaultReport.objects.create(machine=lab.laser, severity=OUT, description="old", created_at=old, closed_at=old)
    open_old = FaultReport.objects.create(machine=lab.laser, severity=OUT, description="still open", created_at=old)
    closed_recent = FaultReport.objects.create(
        machine=lab.laser, severity=MINOR, description="new", created_at=recent, closed_at=recent
    )
    MachineCheck.objects.create(machine=lab.laser, requested_at=old, checked_at=old)
    pending_old = MachineCheck.objects.create(machine=lab.laser, requested_at=old)
    result = purge(now=now)
    assert (result.refusals, result.fault_reports, result.checks) == (1, 1, 1)
    assert list(Refusal.objects.all()) == [kept_refusal]
    assert set(FaultReport.objects.all()) == {open_old, closed_recent}
    assert list(MachineCheck.objects.all()) == [pending_old]
    assert purge(now=now).total == 0  # idempotent


def test_erasing_a_member_deletes_their_refusals(lab: Lab) -> None:
    safety.record_refusal(lab.laser.pk, Refusal.Reason.EXPIRED, member_id=lab.normal.pk, uid="aabbccd3")
    other = Refusal.objects.create(machine=lab.laser, member=lab.unauthorized, reason=Refusal.Reason.NOT_AUTHORIZED)
    FaultReport.objects.create(machine=lab.laser, severity=MINOR, description="x", reporter="Nina Test")
    erase_member(lab.normal)
    assert list(Refusal.objects.all()) == [other]
    assert FaultReport.objects.get().reporter == ""
