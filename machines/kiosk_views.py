"""The kiosk page, ``/kiosk/<secret>/``: no login, no session, no cookie; a wrong or revoked secret is a plain 404.

The server draws the whole board (correct without the script); ``fabomatic/static/fabomatic/kiosk.js`` keeps it
live over ``/ws/kiosk/<secret>/`` (:mod:`machines.kiosk_consumer`). The page is in the lab's ``LANGUAGE_CODE``, or
in the language of ``?lang=it|en``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils import timezone, translation
from django.utils.translation import gettext, npgettext
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from . import kiosk
from .dashboard.tiles import STATE_LABELS, counter_labels, elapsed_text


def state_labels() -> dict[str, str]:
    return {
        # Translators: a machine's state on the lab's kiosk screen.
        "out_of_order": gettext("Out of order"),
        "to_check": gettext("To check"),
        **{state: str(label) for state, label in STATE_LABELS.items()},
    }


def counter_forms() -> dict[str, list[str]]:
    """Each counter's label for one machine and for several."""
    return {
        "out_of_order": [npgettext("machines counter", "Out of order", "Out of order", n) for n in (1, 2)],
        "to_check": [npgettext("machines counter", "To check", "To check", n) for n in (1, 2)],
        **counter_labels(),
    }


def page_context(secret: str, language: str) -> dict[str, Any]:
    now = timezone.now()
    tiles = kiosk.kiosk_tiles(now=now)
    states = state_labels()
    forms = counter_forms()
    counts = dict.fromkeys(kiosk.KIOSK_STATES, 0)
    rows = []
    for tile in tiles:
        counts[tile["state"]] += 1
        since = datetime.fromisoformat(tile["since"]) if tile["since"] else None
        rows.append({**tile, "label": states[tile["state"]], "elapsed": elapsed_text(since, now) if since else ""})
    return {
        "language": language,
        "lab_name": settings.LAB_NAME,
        "now": now,
        "time_zone": settings.TIME_ZONE,
        "online_seconds": settings.ONLINE_SECONDS,
        "ws_path": f"/ws/kiosk/{secret}/",
        "tiles": rows,
        "tiles_data": tiles,
        "counters": [
            {"state": state, "label": forms[state][counts[state] != 1], "count": counts[state]}
            for state in kiosk.KIOSK_STATES
        ],
        "labels": {
            "states": states,
            "counters": forms,
            "live": gettext("Live"),
            "connecting": gettext("Connecting…"),
            "reconnecting": gettext("Not live, reconnecting… (state at %(time)s)"),
            "gone": gettext("This screen's address no longer works. Ask the lab's staff for a new one."),
        },
    }


@never_cache
@require_safe
def kiosk_page(request: HttpRequest, secret: str) -> HttpResponse:
    screen = kiosk.screen_for(secret)
    if screen is None:
        raise Http404
    kiosk.touch(screen)
    wanted = request.GET.get("lang", "")
    language = wanted if wanted in dict(settings.LANGUAGES) else settings.LANGUAGE_CODE
    with translation.override(language):
        # No request in the template's context: nothing reads the session or makes a CSRF cookie.
        body = render_to_string("kiosk/page.html", page_context(secret, language))
    response = HttpResponse(body)
    response["Content-Language"] = language
    # The secret is in the address: no page it links to learns it, and no search engine lists it.
    response["Referrer-Policy"] = "no-referrer"
    response["X-Robots-Tag"] = "noindex, nofollow"
    return response
