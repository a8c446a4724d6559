"""The weekly summary e-mail."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core import mail
from django.core.mail import EmailMultiAlternatives
from django.core.management import call_command
from django.utils import timezone

from machines import reports
from machines.models import Use
from members.models import Member, UnknownCard

from .conftest import Lab

pytestmark = pytest.mark.django_db


@pytest.fixture
def week(lab: Lab) -> Lab:
    now = timezone.now()
    for age, hours, machine in [(2, 2.5, lab.laser), (3, 1.0, lab.laser), (1, 0.25, lab.printer), (10, 5, lab.laser)]:
        start = now - timedelta(days=age)
        Use.objects.create(
            member=lab.normal,
            machine=machine,
            started_at=start,
            ended_at=start + timedelta(hours=hours),
            last_seen=start + timedelta(hours=hours),
            duration=int(hours * 3600),
        )
    lab.laser.hours = 11.5  # the 10 h plan is overdue by 1.5 h
    lab.laser.save()
    UnknownCard.objects.create(uid="deadbeef", machine=lab.laser, seen_at=now - timedelta(days=2))
    UnknownCard.objects.create(uid="deadbeef", machine=lab.printer, seen_at=now - timedelta(days=1))
    UnknownCard.objects.create(uid="0badcafe", machine=lab.laser, seen_at=now - timedelta(days=20))  # too old
    for m in (lab.normal, lab.staff):
        m.receive_weekly_summary = True
        m.save()
    return lab


def _sent(index: int) -> EmailMultiAlternatives:
    """A summary from the outbox: text, with the HTML as its alternative."""
    message = mail.outbox[index]
    assert isinstance(message, EmailMultiAlternatives)
    return message


def _html(message: EmailMultiAlternatives) -> str:
    html = message.alternatives[0][0]
    assert isinstance(html, str)
    return html


def test_the_summary_counts_the_last_week_only(week: Lab) -> None:
    s = reports.build_summary()

    assert [(m.name, m.hours, m.uses) for m in s.machine_hours] == [("LASER 1", 3.5, 2), ("PRINTER 1", 0.25, 1)]
    assert [(p.machine, p.description, p.overdue_hours) for p in s.overdue] == [("LASER 1", "Clean the lens", 1.5)]
    assert [(c.uid, c.machines, c.attempts) for c in s.unknown_cards] == [("deadbeef", ["LASER 1", "PRINTER 1"], 2)]


def test_it_sends_html_and_text_in_english(week: Lab) -> None:
    result = reports.send_weekly_summary(language="en")

    assert (result.sent, result.failed) == (2, 0)
    message = _sent(0)
    assert message.subject == "Fab-O-Matic - Weekly summary"
    assert len(message.to) == 1  # one message per member: nobody sees the others' addresses
    html = _html(message)
    assert message.alternatives[0][1] == "text/html"
    for body in (message.body, html):
        assert "LASER 1" in body and "3.5" in body and "Clean the lens" in body and "deadbeef" in body
    assert "overdue by 1.5 h" in message.body and "MACHINE USAGE" in message.body
    assert "<h2" in html and "Machine usage" in html


def test_it_speaks_italian(week: Lab) -> None:
    reports.send_weekly_summary(language="it")

    message = _sent(0)
    assert message.subject == "Fab-O-Matic - Riepilogo settimanale"
    assert "UTILIZZO DELLE MACCHINE" in message.body and "scaduta da 1,5 h" in message.body  # Italian decimals
    html = _html(message)
    assert 'lang="it"' in html and "Tessere non riconosciute" in html and "3,5" in html


def test_only_opted_in_active_members_with_an_email_receive_it(week: Lab) -> None:
    Member.objects.filter(pk=week.staff.pk).update(disabled=True)
    Member.objects.filter(pk=week.admin.pk).update(receive_weekly_summary=True, is_active=False)
    Member.objects.filter(pk=week.unauthorized.pk).update(receive_weekly_summary=True, deleted_at=timezone.now())
    Member.objects.create_user(first_name="NoMail", receive_weekly_summary=True)

    reports.send_weekly_summary(language="en")

    assert [m.to for m in mail.outbox] == [["nina@lab.test"]]


def test_dry_run_prints_it_and_sends_nothing(week: Lab) -> None:
    out = StringIO()
    call_command("send_weekly_summary", "--dry-run", "--language", "it", "--html", stdout=out)

    assert mail.outbox == []
    text = out.getvalue()
    assert "Subject: Fab-O-Matic - Riepilogo settimanale" in text
    assert "nina@lab.test" in text and "sam@lab.test" in text
    assert "UTILIZZO DELLE MACCHINE" in text and "<html" in text


def test_the_command_reports_what_it_sent(week: Lab) -> None:
    out = StringIO()
    call_command("send_weekly_summary", "--language", "en", stdout=out)
    assert "2 sent, 0 failed" in out.getvalue() and len(mail.outbox) == 2


def test_a_quiet_week_says_so(lab: Lab) -> None:
    text = reports.render(reports.build_summary(), "en").text
    assert "No machine was used this week." in text and "Nothing overdue." in text
