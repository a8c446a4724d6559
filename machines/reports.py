"""The weekly summary e-mail: one lab-wide report for the members who opted in.

Content (the same for every recipient): hours per machine over the last 7 days, maintenance overdue and due soon,
and cards that were swiped but matched no member. Sent by ``manage.py send_weekly_summary`` (Sunday 09:00 timer).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db.models import Count, Max, Min, Q, Sum
from django.template.loader import render_to_string
from django.utils import timezone, translation

from members.models import Member, UnknownCard

from .models import Machine, MaintenancePlan, Use

logger = logging.getLogger(__name__)

LANGUAGES = ("en", "it")


@dataclass
class MachineHours:
    name: str
    hours: float
    uses: int


@dataclass
class PlanDue:
    machine: str
    description: str
    hours_since: float
    hours_between: float
    instructions_url: str

    @property
    def overdue_hours(self) -> float:
        return self.hours_since - self.hours_between

    @property
    def hours_left(self) -> float:
        return self.hours_between - self.hours_since


@dataclass
class StrayCard:
    uid: str
    machines: list[str]
    first_seen: datetime
    attempts: int


@dataclass
class Summary:
    start: datetime
    end: datetime
    portal_url: str
    machine_hours: list[MachineHours] = field(default_factory=list)
    overdue: list[PlanDue] = field(default_factory=list)
    due_soon: list[PlanDue] = field(default_factory=list)
    unknown_cards: list[StrayCard] = field(default_factory=list)

    @property
    def total_hours(self) -> float:
        return sum(m.hours for m in self.machine_hours)


def portal_url() -> str:
    url = getattr(settings, "PORTAL_URL", "") or ""
    if url:
        return url.rstrip("/")
    hosts = [h for h in settings.ALLOWED_HOSTS if h and "*" not in h and not h.startswith(".")]
    return f"https://{hosts[0] if hosts else 'localhost'}:23336"


def build_summary(*, now: datetime | None = None, days: int = 7) -> Summary:
    end = now or timezone.now()
    start = end - timedelta(days=days)
    summary = Summary(start=start, end=end, portal_url=portal_url())

    rows = (
        Use.objects.filter(started_at__gte=start, started_at__lt=end, ended_at__isnull=False)
        .values("machine__name")
        .annotate(seconds=Sum("duration"), uses=Count("pk"))
        .order_by("-seconds", "machine__name")
    )
    summary.machine_hours = [
        MachineHours(name=r["machine__name"], hours=(r["seconds"] or 0) / 3600, uses=r["uses"]) for r in rows
    ]

    for plan in MaintenancePlan.objects.select_related("machine").order_by("machine__name", "pk"):
        since = plan.hours_since()
        item = PlanDue(
            machine=plan.machine.name,
            description=plan.description,
            hours_since=since,
            hours_between=plan.hours_between,
            instructions_url=plan.instructions_url,
        )
        if plan.is_due():
            summary.overdue.append(item)
        elif plan.is_due_soon():
            summary.due_soon.append(item)
    summary.overdue.sort(key=lambda p: -p.overdue_hours)
    summary.due_soon.sort(key=lambda p: p.hours_left)

    cards = (
        UnknownCard.objects.filter(seen_at__gte=start, seen_at__lt=end)
        .values("uid")
        # One row per card and machine: its swipes are counted in the row (the first one may predate the week).
        .annotate(first=Min("first_seen"), last=Max("seen_at"), attempts=Sum("count"))
        .order_by("first")
    )
    names: dict[str, set[str]] = {}
    for uid, name in UnknownCard.objects.filter(seen_at__gte=start, seen_at__lt=end).values_list(
        "uid", "machine__name"
    ):
        names.setdefault(uid, set()).add(name)
    summary.unknown_cards = [
        StrayCard(uid=c["uid"], machines=sorted(names.get(c["uid"], ())), first_seen=c["first"], attempts=c["attempts"])
        for c in cards
    ]
    return summary


def recipients() -> list[Member]:
    """Active members who opted in and have an e-mail address."""
    return list(
        Member.objects.filter(receive_weekly_summary=True, is_active=True, disabled=False, deleted_at__isnull=True)
        .exclude(Q(email__isnull=True) | Q(email=""))
        .order_by("pk")
    )


@dataclass
class RenderedMail:
    subject: str
    text: str
    html: str


def render(summary: Summary, language: str) -> RenderedMail:
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}")
    context: dict[str, Any] = {"s": summary, "machines_total": Machine.objects.count()}
    with translation.override(language), timezone.override(settings.TIME_ZONE):
        subject = render_to_string(f"machines/weekly_summary/subject_{language}.txt", context).strip()
        text = render_to_string(f"machines/weekly_summary/body_{language}.txt", context)
        html = render_to_string(f"machines/weekly_summary/body_{language}.html", context)
    return RenderedMail(subject=subject, text=text, html=html)


@dataclass
class SendResult:
    sent: int = 0
    failed: int = 0


def send_weekly_summary(*, language: str | None = None, now: datetime | None = None) -> SendResult:
    """Send the summary to every recipient, one message each (nobody sees the others' addresses)."""
    language = language or default_language()
    mail = render(build_summary(now=now), language)
    result = SendResult()
    people = recipients()
    if not people:
        logger.info("Weekly summary: no recipients")
        return result
    connection = get_connection(fail_silently=False)
    for member in people:
        assert member.email  # recipients() excludes members without an address
        message = EmailMultiAlternatives(mail.subject, mail.text, settings.DEFAULT_FROM_EMAIL, [member.email])
        message.attach_alternative(mail.html, "text/html")
        try:
            connection.send_messages([message])
            result.sent += 1
        except Exception:  # one bad address or a hiccup must not stop the others
            logger.exception("Weekly summary to member #%s failed", member.pk)
            result.failed += 1
    logger.info("Weekly summary: %s sent, %s failed", result.sent, result.failed)
    return result


def default_language() -> str:
    language = (getattr(settings, "WEEKLY_SUMMARY_LANGUAGE", "") or settings.LANGUAGE_CODE or "en")[:2]
    return language if language in LANGUAGES else "en"
