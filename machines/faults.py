"""Fault reports from the machine's QR sticker: the public report page, its rate limit, and staff's e-mail.

The sticker's QR code opens ``/report/<report_token>/``: no login, an address nobody can guess from the machine's
id (``Machine.report_token``), CSRF on. A reporter's address is never stored: only its keyed hash
(``safety.report_source``), which the rate limit counts (``FAULT_REPORTS_PER_HOUR`` per address, ``PER_MACHINE_HOUR``
per machine). An "out of order" report mails the staff who maintain machines (:func:`recipients`) in their own
language, off the request path; a minor one is shown on the dashboard only.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta

from django import forms
from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import close_old_connections, connections
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext_lazy as _
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_http_methods

from members.models import Member
from operations import audit

from . import safety
from .dashboard import events
from .models import FaultReport, Machine

logger = logging.getLogger(__name__)

PER_MACHINE_HOUR = 20  # public reports of one machine in an hour: beyond it the page answers 429
HOUR = timedelta(hours=1)


class ReportForm(forms.Form):
    description = forms.CharField(
        label=_("What is wrong?"),
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 5, "maxlength": 2000}),
    )
    severity = forms.ChoiceField(
        label=_("How bad is it?"),
        choices=FaultReport.Severity.choices,
        initial=FaultReport.Severity.MINOR,
        widget=forms.RadioSelect,
    )
    reporter = forms.CharField(
        label=_("Your name or contact (optional)"),
        max_length=100,
        required=False,
        help_text=_("Only if you want staff to get back to you."),
    )
    # A field people never see (hidden by report.css): bots that fill every field give themselves away.
    website = forms.CharField(required=False, label=_("Leave this empty"))

    def clean_description(self) -> str:
        text = self.cleaned_data["description"].strip()
        if not text:
            raise forms.ValidationError(_("Please say what is wrong."))
        return text


# --- Rate limit -----------------------------------------------------------------------------------


def client_address(request: HttpRequest) -> str:
    """The visitor's address as the project takes it: ``REMOTE_ADDR``, which daphne sets from ``X-Forwarded-For``
    only when started with ``PROXY_HEADERS=1`` (behind the lab's reverse proxy), never from a header otherwise."""
    return request.META.get("REMOTE_ADDR") or "-"


def over_limit(machine: Machine, source: str, now: datetime | None = None) -> bool:
    """Whether one more public report from ``source`` (a :func:`safety.report_source` hash) on ``machine`` would
    exceed ``FAULT_REPORTS_PER_HOUR`` per address or ``PER_MACHINE_HOUR`` per machine. Counts stored reports of the
    last hour (the ``fault_created`` index), so the limit holds across the portal's processes and restarts."""
    since = (now or timezone.now()) - HOUR
    recent = FaultReport.objects.filter(created_at__gt=since).exclude(source="")
    if recent.filter(source=source).count() >= settings.FAULT_REPORTS_PER_HOUR:
        return True
    return recent.filter(machine=machine).count() >= PER_MACHINE_HOUR


# --- Public pages ---------------------------------------------------------------------------------


def _machine_of(token: str) -> Machine:
    """The machine whose sticker carries ``token``; a plain 404 otherwise (it says nothing of what exists)."""
    machine = Machine.objects.filter(report_token=token).select_related("type").first() if token else None
    if machine is None:
        raise Http404
    return machine


@csrf_protect
@require_http_methods(["GET", "POST"])
def report_view(request: HttpRequest, token: str) -> HttpResponse:
    """The page the QR sticker opens: a phone-sized form, no login."""
    machine = _machine_of(token)
    form = ReportForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        thanks = HttpResponseRedirect(
            reverse("fault_report_thanks", args=[token]) + f"?s={form.cleaned_data['severity']}"
        )
        if form.cleaned_data["website"]:
            logger.info("Fault report for machine %s dropped: the honeypot field was filled", machine.pk)
            return thanks  # a bot: it sees the usual answer, nothing is stored
        source = safety.report_source(client_address(request))
        if over_limit(machine, source):
            logger.warning("Fault report rate limit reached for machine %s", machine.pk)
            return render(request, "machines/report/limited.html", {"machine": machine}, status=429)
        # Not in the audit trail, which would keep the visitor's address: it records staff changes.
        with audit.paused():
            fault = safety.report_fault(
                machine,
                severity=form.cleaned_data["severity"],
                description=form.cleaned_data["description"],
                reporter=form.cleaned_data["reporter"],
                source=source,
            )
        announce(fault)
        return thanks
    return render(request, "machines/report/form.html", {"machine": machine, "form": form})


@require_http_methods(["GET"])
def thanks_view(request: HttpRequest, token: str) -> HttpResponse:
    machine = _machine_of(token)
    locks = request.GET.get("s") == FaultReport.Severity.OUT_OF_ORDER
    return render(request, "machines/report/thanks.html", {"machine": machine, "locks": locks})


# --- What a new report sets off -------------------------------------------------------------------


def announce(fault: FaultReport) -> None:
    """A report was filed (public page or portal): the machine's tile changes on every open dashboard, and staff
    are mailed when it puts the machine out of order."""
    events.push_on_commit([fault.machine_id])
    if fault.severity == FaultReport.Severity.OUT_OF_ORDER:
        queue_staff_mail(fault.pk)


def recipients() -> list[Member]:
    """Who is told of an out-of-order report: active portal users whose role may do maintenance (the board's level
    2, the people who can close it at the machine) and who have an e-mail address."""
    return list(
        Member.objects.filter(
            is_staff=True, is_active=True, disabled=False, deleted_at__isnull=True, role__maintenance=True
        )
        .exclude(Q(email__isnull=True) | Q(email=""))
        .order_by("pk")
    )


def mail_language(member: Member) -> str:
    codes = {code for code, _name in settings.LANGUAGES}
    language = member.language or settings.LANGUAGE_CODE or "en"
    return language if language in codes else language[:2] if language[:2] in codes else "en"


def portal_link(path: str) -> str:
    return settings.PUBLIC_URL + path


def send_staff_mail(fault_id: int) -> int:
    """Mail the report to every :func:`recipients`, each in their language. Returns how many were sent."""
    fault = FaultReport.objects.select_related("machine").filter(pk=fault_id).first()
    if fault is None:
        return 0
    link = portal_link(reverse("admin:machines_machine_change", args=[fault.machine_id]))
    sent = 0
    connection = get_connection(fail_silently=False)
    for member in recipients():
        assert member.email  # recipients() excludes members without an address
        with translation.override(mail_language(member)), timezone.override(settings.TIME_ZONE):
            context = {"fault": fault, "machine": fault.machine, "link": link, "member": member}
            subject = render_to_string("machines/report/mail_subject.txt", context).strip()
            body = render_to_string("machines/report/mail_body.txt", context)
        try:
            connection.send_messages([EmailMessage(subject, body, settings.DEFAULT_FROM_EMAIL, [member.email])])
            sent += 1
        except Exception:  # one bad address or a hiccup must not stop the others
            logger.exception("Fault report mail to member #%s failed", member.pk)
    return sent


# One worker: a slow SMTP server holds up only this thread, never the reporter's page. Not a daemon: a queued mail
# is still sent when the process shuts down.
_mailer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fault-report-mail")


def _send_in_background(fault_id: int) -> None:
    close_old_connections()
    try:
        send_staff_mail(fault_id)
    except Exception:
        logger.exception("Fault report mail not sent")
    finally:
        connections.close_all()  # this thread's own database connection


def queue_staff_mail(fault_id: int) -> Future[None]:
    return _mailer.submit(_send_in_background, fault_id)


# --- The sticker ----------------------------------------------------------------------------------


def report_url(request: HttpRequest, machine: Machine) -> str:
    """The absolute address of the machine's report page: from ``PUBLIC_URL`` when it is set, else the request's."""
    path = reverse("fault_report", args=[machine.report_token])
    if settings.PUBLIC_URL_SET:
        return settings.PUBLIC_URL + path
    return request.build_absolute_uri(path)


def qr_svg(url: str) -> SafeString:
    """The QR code of ``url`` as inline SVG (segno; error correction M survives a scratched sticker).

    segno is imported here, not with the module: the portal's every process would carry it for the few stickers a
    lab ever prints (its memory budget on a Raspberry Pi, README → Memory)."""
    import segno

    svg = segno.make(url, error="m", micro=False).svg_inline(scale=1, border=2, omitsize=True, title=url)
    return mark_safe(svg)  # segno writes the SVG; the only text in it, the title, is escaped by segno
