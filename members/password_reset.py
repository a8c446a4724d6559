"""Password reset through Django's own flow, rate-limited and never revealing whether an address exists.

Whatever is typed, the answer is the same redirect to the "check your e-mail" page. A mail is sent only to an
active member with that address who has (or, being staff, may set) a portal password, and at most
``EMAIL_LIMIT`` per address and ``IP_LIMIT`` per client IP in ``WINDOW_SECONDS`` (counters in Django's cache).
Over the limit, nothing is sent and nothing is said.

The mail is sent off the request path, by one background thread: looking the address up, rendering and talking to
the SMTP server took 350-440 ms for an existing staff address against 8-17 ms for an unknown one, which told staff
addresses apart. Now both answers return before any of that happens.

Links point to ``settings.PUBLIC_URL``, the lab's configured address, never to the request's Host header: a reset
asked for with ``Host: evil.example`` must not mail a link to evil.example.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.forms import PasswordResetForm
from django.contrib.auth.views import PasswordResetView
from django.core.cache import cache
from django.db import close_old_connections, connections
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

from .forms import StaffPasswordResetForm

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 3600
EMAIL_LIMIT = 3
IP_LIMIT = 10


def _hit(key: str, limit: int) -> bool:
    """Count one attempt under ``key``; True while within ``limit`` in the window."""
    cache.add(key, 0, WINDOW_SECONDS)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, WINDOW_SECONDS)
        count = 1
    return count <= limit


def allowed(*, ip: str | None, email: str) -> bool:
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
    by_email = _hit(f"pwreset:email:{digest}", EMAIL_LIMIT)
    by_ip = _hit(f"pwreset:ip:{ip or '-'}", IP_LIMIT)
    return by_email and by_ip


def link_options() -> dict[str, Any]:
    """``PasswordResetForm.save()`` arguments that build the link from ``PUBLIC_URL`` alone."""
    url = urlsplit(settings.PUBLIC_URL)
    return {"domain_override": url.netloc, "use_https": url.scheme == "https"}


def send_reset_mail(email: str) -> bool:
    """Mail a reset link to the member with this address, if they may have a portal password.

    False when the address is not one (nothing is sent); True does not tell whether a member has it.
    """
    form = StaffPasswordResetForm({"email": email})
    if not form.is_valid():
        return False
    form.save(**link_options())
    return True


# One worker: mails go out one at a time (the rate limits keep the queue short), and a slow SMTP server holds up
# only this thread. Not a daemon: a queued mail is still sent when the process shuts down.
_mailer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="password-reset-mail")


def _send_in_background(email: str) -> None:
    close_old_connections()
    try:
        send_reset_mail(email)
    except Exception:  # the form already logs SMTP failures; this is for the lookup and the rendering
        logger.exception("Password reset mail not sent")
    finally:
        connections.close_all()  # this thread's own database connection


def queue_reset_mail(email: str) -> Future[None]:
    """Send the reset mail off the request path; the answer must not depend on whether the address exists."""
    return _mailer.submit(_send_in_background, email)


class RateLimitedPasswordResetView(PasswordResetView):
    # Staff added in the portal or imported have no password yet: reset is how they set their first one.
    form_class = StaffPasswordResetForm

    def form_valid(self, form: PasswordResetForm) -> HttpResponse:
        request: HttpRequest = self.request
        if allowed(ip=request.META.get("REMOTE_ADDR"), email=form.cleaned_data["email"]):
            queue_reset_mail(form.cleaned_data["email"])
        else:
            logger.warning("Password reset rate limit reached (IP %s)", request.META.get("REMOTE_ADDR"))
        # The same answer either way: no hint about limits or addresses.
        return HttpResponseRedirect(self.get_success_url())
