"""Password reset through Django's own flow, rate-limited and never revealing whether an address exists.

Whatever is typed, the answer is the same redirect to the "check your e-mail" page. A mail is sent only to an
active member with that address who has (or, being staff, may set) a portal password, and at most
``EMAIL_LIMIT`` per address and ``IP_LIMIT`` per client IP in ``WINDOW_SECONDS`` (counters in Django's cache).
Over the limit, nothing is sent and nothing is said.

Links point to ``settings.PUBLIC_URL``, the lab's configured address, never to the request's Host header: a reset
asked for with ``Host: evil.example`` must not mail a link to evil.example.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.forms import PasswordResetForm
from django.contrib.auth.views import PasswordResetView
from django.core.cache import cache
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


def send_reset_mail(email: str) -> None:
    """Mail a reset link to the member with this address, if they may have a portal password."""
    form = StaffPasswordResetForm({"email": email})
    if form.is_valid():
        form.save(**link_options())


class RateLimitedPasswordResetView(PasswordResetView):
    # Staff added in the portal or imported have no password yet: reset is how they set their first one.
    form_class = StaffPasswordResetForm

    def form_valid(self, form: PasswordResetForm) -> HttpResponse:
        request: HttpRequest = self.request
        if allowed(ip=request.META.get("REMOTE_ADDR"), email=form.cleaned_data["email"]):
            send_reset_mail(form.cleaned_data["email"])
        else:
            logger.warning("Password reset rate limit reached (IP %s)", request.META.get("REMOTE_ADDR"))
        # The same answer either way: no hint about limits or addresses.
        return HttpResponseRedirect(self.get_success_url())
