"""Reminder e-mails before a training lapses (issue 12, item 1): one mail per member listing all their lapsing
trainings, at most one a day, none after opting out, in the member's language."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core import mail
from django.core.management import call_command
from django.utils import timezone
from pytest_django import Settings

from machines import safety
from machines.models import Machine, MachineType
from members.models import Member

from .conftest import Lab

pytestmark = pytest.mark.django_db


@pytest.fixture
def lapsing(lab: Lab, settings: Settings) -> Lab:
    """Nina's laser and CNC trainings lapse within the 14 days; Ugo's laser one in 40 days (not yet)."""
    settings.LANGUAGE_CODE = "en"
    cnc = Machine.objects.create(id=3, name="CNC", type=MachineType.objects.create(name="Mills"))
    today = timezone.localdate()
    safety.grant(lab.normal, lab.laser, by=lab.staff, expiry="on_date", on_date=today + timedelta(days=3))
    safety.grant(lab.normal, cnc, by=lab.staff, expiry="idle_days", days=10)
    safety.grant(lab.unauthorized, lab.laser, by=lab.staff, expiry="after_days", days=40)
    return lab


def run() -> str:
    out = StringIO()
    call_command("send_training_reminders", stdout=out)
    return out.getvalue()


def test_one_mail_lists_every_lapsing_training_and_says_how_to_opt_out(lapsing: Lab) -> None:
    assert "1 sent" in run()
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["nina@lab.test"]
    assert message.subject == "Your training on 2 machines expires soon"
    assert "LASER 1: expires" in message.body and "CNC: expires after 10 days unused" in message.body
    assert 'untick "training reminders"' in message.body


def test_at_most_one_mail_a_day_even_when_run_twice(lapsing: Lab) -> None:
    run()
    second = run()
    assert "0 sent" in second and "1 already reminded today" in second
    assert len(mail.outbox) == 1
    nina = Member.objects.get(pk=lapsing.normal.pk)
    assert nina.last_reminder_on == timezone.localdate()
    Member.objects.filter(pk=nina.pk).update(last_reminder_on=timezone.localdate() - timedelta(days=1))
    run()  # the next day: reminded again
    assert len(mail.outbox) == 2


def test_no_mail_after_opting_out_or_without_an_address(lapsing: Lab) -> None:
    Member.objects.filter(pk=lapsing.normal.pk).update(training_reminders=False)
    run()
    assert mail.outbox == []
    Member.objects.filter(pk=lapsing.normal.pk).update(training_reminders=True, email=None)
    run()
    assert mail.outbox == []


def test_an_italian_member_is_written_in_italian(lapsing: Lab) -> None:
    Member.objects.filter(pk=lapsing.normal.pk).update(language="it")
    run()
    message = mail.outbox[0]
    assert message.subject == "La tua abilitazione a 2 macchine sta per scadere"
    assert "scade dopo 10 giorni di inutilizzo" in message.body
    assert "promemoria abilitazioni" in message.body
    day = (timezone.localdate() + timedelta(days=3)).strftime("%d/%m/%Y")
    assert f"LASER 1: scade {day}" in message.body


def test_the_lab_language_is_used_when_the_member_has_none(lapsing: Lab, settings: Settings) -> None:
    settings.LANGUAGE_CODE = "it"
    run()
    assert mail.outbox[0].subject.startswith("La tua abilitazione")


def test_a_failed_send_is_retried_by_the_next_run(lapsing: Lab, settings: Settings) -> None:
    settings.EMAIL_BACKEND = "tests.test_training_reminders.FailingBackend"
    assert "1 failed" in run()
    assert Member.objects.get(pk=lapsing.normal.pk).last_reminder_on is None
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    run()
    assert len(mail.outbox) == 1


def test_the_dry_run_sends_nothing(lapsing: Lab) -> None:
    out = StringIO()
    call_command("send_training_reminders", "--dry-run", stdout=out)
    assert "nina@lab.test [en]" in out.getvalue() and mail.outbox == []
    assert Member.objects.get(pk=lapsing.normal.pk).last_reminder_on is None


class FailingBackend:
    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def send_messages(self, messages: object) -> int:
        raise OSError("SMTP server unreachable")
