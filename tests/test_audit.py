"""The audit trail (issue 11, item 4): staff changes with who, when, what and before/after, in one searchable,
filterable, exportable list and on each object; logins, exports and list actions too; kept AUDIT_RETENTION_DAYS;
redacted on erasure (django-auditlog, operations/audit.py)."""

from __future__ import annotations

import html
from datetime import timedelta

from auditlog.context import set_actor
from auditlog.models import LogEntry
from django.contrib.admin.models import CHANGE
from django.contrib.admin.models import LogEntry as AdminLogEntry
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext_noop

from machines.models import Machine
from members.gdpr import erase_member, purge
from members.models import Card, Member, Role
from operations import audit

from .conftest import Lab
from .test_export_xlsx import export

AUDIT = reverse("admin:auditlog_logentry_changelist")


def message(entry: LogEntry) -> str:
    """The entry's message as written in the code (stored as a msgid and its parameters)."""
    return audit.english(entry)


def test_a_form_change_is_recorded_with_who_and_before_after(admin_client: Client, lab: Lab) -> None:
    url = reverse("admin:members_role_change", args=[lab.normal.role_id])
    form = {"name": "Makers", "authorize_all": "", "maintenance": "", "backend_admin": ""}
    assert admin_client.post(url, form).status_code == 302
    entry = LogEntry.objects.get_for_object(lab.normal.role).latest()
    assert entry.changes["name"] == ["USER", "Makers"]
    assert entry.actor is not None and entry.actor.is_superuser


def test_list_actions_are_recorded(admin_client: Client, lab: Lab) -> None:
    changelist = reverse("admin:machines_machine_changelist")
    admin_client.post(changelist, {"action": "block", "_selected_action": [lab.laser.pk]})
    entry = LogEntry.objects.get_for_object(lab.laser).latest()
    assert message(entry) == "Blocked" and entry.changes == {"blocked": ["False", "True"]}
    assert entry.actor is not None


def test_logins_and_failed_logins_are_recorded(client: Client, lab: Lab, fast_passwords: None) -> None:
    cache.clear()
    staff = lab.staff
    staff.is_staff = True
    staff.set_password("correct-horse-battery-9")
    staff.save()
    client.post("/admin/login/", {"username": staff.email, "password": "wrong"})
    client.post("/admin/login/", {"username": "nobody@lab.test", "password": "wrong"})
    client.post("/admin/login/?next=/admin/", {"username": staff.email, "password": "correct-horse-battery-9"})
    messages = [message(e) for e in LogEntry.objects.filter(action=LogEntry.Action.ACCESS).order_by("timestamp")]
    assert messages == ["Failed login", "Failed login as “nobody@lab.test”", "Logged in"]
    assert LogEntry.objects.filter(object_repr="Failed login as “nobody@lab.test”").exists()


def test_exports_of_personal_data_are_recorded(admin_client: Client, lab: Lab) -> None:
    export(admin_client, "members_member", "?q=Test")
    entry = LogEntry.objects.filter(
        action=LogEntry.Action.ACCESS, additional_data__message__startswith="Exported"
    ).get()
    assert "members" in message(entry)
    assert entry.actor is not None


def test_the_audit_list_is_searchable_filterable_exportable_and_on_each_object(admin_client: Client, lab: Lab) -> None:
    admin_client.post(
        reverse("admin:machines_machine_changelist"), {"action": "block", "_selected_action": [lab.laser.pk]}
    )
    page = admin_client.get(AUDIT, {"q": "Blocked", "action__exact": LogEntry.Action.UPDATE}).content.decode()
    assert "LASER 1" in page
    rows = export(admin_client, "auditlog_logentry", "?q=Blocked")
    assert rows[0][:3] == ("When", "Who", "Action")  # headers capitalised, in the reader's language
    assert [row[6] for row in rows[1:]].count("Blocked") == 1  # the "message" column
    machine_page = admin_client.get(reverse("admin:machines_machine_change", args=[lab.laser.pk])).content.decode()
    audit_url = reverse("admin:machines_machine_auditlog", args=[lab.laser.pk])
    assert audit_url in machine_page
    assert "blocked" in admin_client.get(audit_url).content.decode().lower()


def test_only_portal_administrators_see_the_audit_list(client: Client, lab: Lab) -> None:
    staff = lab.staff  # a maintenance role: no portal administration
    staff.is_staff = True
    staff.save()
    client.force_login(staff)
    assert client.get(AUDIT).status_code == 403


def test_the_purge_deletes_audit_entries_older_than_the_retention(lab: Lab, settings) -> None:
    settings.AUDIT_RETENTION_DAYS = 30
    Machine.objects.filter(pk=lab.laser.pk).update(name="old")  # no signal: recorded by hand below
    old = audit.record(lab.laser, message="old")
    new = audit.record(lab.laser, message="new")
    assert old is not None and new is not None
    LogEntry.objects.filter(pk=old.pk).update(timestamp=timezone.now() - timedelta(days=31))
    result = purge()
    assert result.audit_entries == 1
    assert list(LogEntry.objects.filter(pk__in=[old.pk, new.pk]).values_list("pk", flat=True)) == [new.pk]


def test_erasure_redacts_the_member_but_keeps_who_did_what(lab: Lab) -> None:
    admin = lab.admin
    with set_actor(admin):
        zoe = Member.objects.create_user(
            email="zoe.p@lab.test", first_name="Zoe", last_name="Privacy", role=Role.objects.get(name="USER")
        )
        Card.objects.create(uid="c0ffee42", member=zoe)
    with set_actor(zoe):  # Zoe, a staff member, changed a machine
        lab.printer.name = "PRINTER 2"
        lab.printer.save()
    erase_member(zoe)
    text = " ".join(
        f"{e.object_repr} {e.changes} {e.changes_text} {e.additional_data} {e.serialized_data} {e.actor_email}"
        for e in LogEntry.objects.all()
    ).lower()
    assert "privacy" not in text and "zoe.p@lab.test" not in text and "c0ffee42" not in text
    assert f"erased member #{zoe.pk}" in text
    by_zoe = LogEntry.objects.get_for_object(lab.printer).latest()
    assert by_zoe.actor_id == zoe.pk and by_zoe.changes["name"] == ["PRINTER 1", "PRINTER 2"]
    created = LogEntry.objects.get_for_object(zoe).filter(action=LogEntry.Action.CREATE).get()
    assert created.actor_id == admin.pk  # who added her is kept


def test_the_purge_anonymises_the_entries_of_history_past_the_retention(admin_client: Client, lab: Lab) -> None:
    start = timezone.now() - timedelta(days=400)
    form = {"member": lab.normal.pk, "machine": lab.laser.pk}
    from machines.models import Use

    use = Use.objects.create(**{f"{k}_id": v for k, v in form.items()}, started_at=start, last_seen=start)
    entry = LogEntry.objects.get_for_object(use).get()
    assert "Nina" in entry.object_repr and entry.changes["member"] == [None, lab.normal.pk]
    purge()
    entry.refresh_from_db()
    anonymous = Member.objects.anonymous()
    assert entry.object_repr.startswith(str(anonymous)) and entry.changes["member"] == [None, anonymous.pk]


def test_an_import_is_one_entry_and_its_broad_roles_are_raised_in_the_portal(admin_client: Client) -> None:
    from io import StringIO

    from django.core.management import call_command

    from members.setup import ensure_defaults

    from .test_import import DATA, SAMPLE

    ensure_defaults()
    before = LogEntry.objects.count()
    call_command("import_fabomatic", str(DATA / SAMPLE), stdout=StringIO())
    imported = LogEntry.objects.count() - before
    entry = LogEntry.objects.latest()
    assert imported == 1 and message(entry).startswith("Import from FabOMatic")
    broad = Role.objects.filter(authorize_all=True, reserved=False)
    assert set(broad.values_list("name", flat=True)) == {"Fab Staff", "Fab Users"}
    page = admin_client.get(reverse("admin:members_member_changelist")).content.decode()
    for role in broad:  # the 1.0.x seed gave "authorize all" to its users' role
        assert f"The role “{role.name}” opens EVERY machine" in page


def test_the_audit_pages_speak_italian(admin_client: Client, lab: Lab) -> None:
    """django-auditlog ships no Italian: its strings are translated in the project's catalog."""
    admin_client.post(reverse("admin:machines_machine_changelist"), {"action": "block", "_selected_action": [1]})
    admin_client.cookies["django_language"] = "it"
    page = admin_client.get(AUDIT).content.decode()
    assert "Registro delle modifiche" in page and "Azione" in page
    for english in (">Audit log<", "Resource Type", "log entries", ">Changes<"):
        assert english not in page, english


# --- Messages in the reader's language -----------------------------------------------------------------------------

STOP = gettext_noop("Remote stop: logged out %(member)s.")


def _italian(client: Client) -> Client:
    client.cookies["django_language"] = "it"
    return client


def test_messages_are_stored_as_msgid_and_params_and_shown_in_the_readers_language(
    admin_client: Client, lab: Lab
) -> None:
    with translation.override("en"):  # recorded while the portal speaks English
        entry = audit.record(lab.laser, message=STOP, params={"member": lab.normal})
    assert entry is not None
    assert entry.additional_data == {"message": STOP, "params": {"member": "Nina Test"}}
    history = reverse("admin:machines_machine_auditlog", args=[lab.laser.pk])
    for url in (AUDIT, history, reverse("admin:auditlog_logentry_change", args=[entry.pk])):
        english = html.unescape(admin_client.get(url).content.decode())
        assert "Remote stop: logged out Nina Test." in english, url
        italian = html.unescape(_italian(admin_client).get(url).content.decode())
        assert "Arresto remoto: disconnesso Nina Test." in italian and "Remote stop: logged out" not in italian, url
        admin_client.cookies["django_language"] = "en"
    rows = export(_italian(admin_client), "auditlog_logentry", "?q=Nina")
    assert "Arresto remoto: disconnesso Nina Test." in [row[6] for row in rows[1:]]


def test_a_message_recorded_in_italian_is_shown_in_english(admin_client: Client, lab: Lab) -> None:
    changelist = reverse("admin:machines_machine_changelist")
    _italian(admin_client).post(changelist, {"action": "block", "_selected_action": [lab.laser.pk]})
    export(admin_client, "members_member")  # an export: no single object, titled by its message
    entry = LogEntry.objects.get_for_object(lab.laser).latest()
    assert entry.additional_data == {"message": "Blocked", "params": {}}
    exported = LogEntry.objects.get(object_pk="", additional_data__message__startswith="Exported")
    assert exported.additional_data["params"]["items"] == {"msgid": "members"}  # the list's name, untranslated
    admin_client.cookies["django_language"] = "en"
    page = html.unescape(admin_client.get(AUDIT).content.decode())
    assert ">Blocked<" in page and "Bloccata" not in page
    n = Member.objects.count()
    assert f"Exported {n} members to Excel" in page and "Esportazione" not in page
    history = admin_client.get(reverse("admin:machines_machine_auditlog", args=[lab.laser.pk])).content.decode()
    assert ">Blocked<" in history
    italian = html.unescape(_italian(admin_client).get(AUDIT).content.decode())
    for column in ("resource_url", "message"):  # the title of an entry about no single object is its message
        assert f'<td class="field-{column}">Esportazione in Excel: {n} soci</td>' in italian


def test_old_entries_with_a_plain_message_still_show(admin_client: Client, lab: Lab) -> None:
    old = audit.record(lab.laser, message="x")
    assert old is not None
    LogEntry.objects.filter(pk=old.pk).update(additional_data={"message": "Blocked"})  # before messages had params
    older = audit.record(lab.printer, message="x")
    assert older is not None
    LogEntry.objects.filter(pk=older.pk).update(additional_data={"message": "Granted machines: LASER 1"})
    page = html.unescape(_italian(admin_client).get(AUDIT).content.decode())
    assert ">Bloccata<" in page  # a known msgid: translated
    assert "Granted machines: LASER 1" in page  # a sentence of its own: as it was stored
    assert audit.message_of({"message": "%(x)s broken", "params": {}}) == "%(x)s broken"
    assert audit.message_of({"message": "Hi %(x)s", "params": {"y": 1}}) == "Hi %(x)s"  # a missing parameter


def test_erasure_redacts_names_in_message_parameters_and_keeps_the_msgid(lab: Lab) -> None:
    zoe = Member.objects.create_user(
        email="zoe.p@lab.test", first_name="Zoe", last_name="Stop", role=Role.objects.get(name="USER")
    )
    entry = audit.record(lab.laser, message=STOP, params={"member": zoe})
    assert entry is not None
    history = AdminLogEntry.objects.log_actions(  # the machine's admin History, as machines/confirm.py writes it
        lab.admin.pk,
        [lab.laser],
        CHANGE,
        change_message=audit.history_message(STOP, {"member": zoe}),
        single_object=True,
    )
    erase_member(zoe)
    entry.refresh_from_db()
    assert entry.additional_data == {"message": STOP, "params": {"member": f"erased member #{zoe.pk}"}}
    history.refresh_from_db()
    assert "Zoe" not in history.change_message
    with translation.override("en"):
        assert audit.history_text(history) == "Remote stop: logged out Erased."
    with translation.override("it"):
        assert audit.message_of(entry) == f"Arresto remoto: disconnesso erased member #{zoe.pk}."


def test_erasure_finds_a_card_deleted_earlier_and_a_name_with_accents(lab: Lab) -> None:
    """The JSON lookups (a deleted card's entries by the member they pointed to) and the text search over JSON
    columns, where SQLite stores "ë" as "\\u00eb" and PostgreSQL as "ë" (tests/test_postgresql.py runs this there)."""
    zoe = Member.objects.create_user(
        email="zoe.n@lab.test", first_name="Zoë", last_name="Ñandú", role=Role.objects.get(name="USER")
    )
    lost = Card.objects.create(uid="c0ffee99", member=zoe)
    lost.delete()  # lost before the erasure: only the trail still links it to her
    for machine in (lab.laser, lab.printer):  # her name only in a message's parameters, on a machine's entries
        audit.record(machine, message=STOP, params={"member": f"{zoe.first_name} {zoe.last_name}"})
    erase_member(zoe)
    text = " ".join(
        f"{e.object_repr} {e.changes} {e.changes_text} {audit.english(e)} {e.serialized_data}"
        for e in LogEntry.objects.all()
    ).lower()
    assert "c0ffee99" not in text and "ñandú" not in text and "zoë" not in text
    assert text.count(f"logged out erased member #{zoe.pk}") == 2


def test_a_history_message_is_shown_in_the_readers_language(admin_client: Client, lab: Lab) -> None:
    """Django's History page of an object: the portal's own messages are stored untranslated too."""
    from machines.models import Use

    start = timezone.now() - timedelta(hours=30)
    use = Use.objects.create(
        member=lab.normal,
        machine=lab.laser,
        started_at=start,
        ended_at=start + timedelta(hours=26),
        last_seen=start,
        flag=Use.Flag.BEYOND_LOGOFF,
    )
    changelist = reverse("admin:machines_use_changelist")
    _italian(admin_client).post(changelist, {"action": "accept_observed", "_selected_action": [use.pk]})
    history = reverse("admin:machines_use_history", args=[use.pk])
    admin_client.cookies["django_language"] = "en"
    assert "Accepted a flagged duration" in admin_client.get(history).content.decode()
    with translation.override("it"):
        italian = translation.gettext("Accepted a flagged duration")
    assert italian != "Accepted a flagged duration" and italian in _italian(admin_client).get(history).content.decode()
