"""``/spaceapi.json``: the lab's SpaceAPI v15 document (https://spaceapi.io), when ``SPACEAPI_ENABLED``.

No login and ``Access-Control-Allow-Origin: *`` (directories and other labs' pages read it from the browser). It
says whether the lab is open (``SPACEAPI_OPEN_RULE``: while any machine is in use, or a fixed flag) and each
machine's state under the custom sensor ``ext_machines`` — names and states only, never who is on a machine. The
document is built at most every :data:`CACHE_SECONDS` seconds (five queries, :func:`machines.dashboard.tiles.tiles`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from machines.dashboard.tiles import tiles

CACHE_SECONDS = 5.0

_lock = threading.Lock()
_cached: tuple[float, dict[str, Any]] = (-CACHE_SECONDS, {})


def is_open(machine_tiles: list[Any]) -> bool:
    rule = settings.SPACEAPI_OPEN_RULE
    if rule in ("open", "closed"):
        return rule == "open"
    return any(tile["state"] == "in_use" for tile in machine_tiles)


def document() -> dict[str, Any]:
    """The SpaceAPI v15 document, from the settings and the machines' tiles."""
    machine_tiles = tiles()
    location: dict[str, Any] = {"timezone": settings.TIME_ZONE}
    if settings.SPACEAPI_ADDRESS:
        location["address"] = settings.SPACEAPI_ADDRESS
    if settings.SPACEAPI_LAT or settings.SPACEAPI_LON:
        location["lat"], location["lon"] = settings.SPACEAPI_LAT, settings.SPACEAPI_LON
    contact = {"email": settings.SPACEAPI_EMAIL} if settings.SPACEAPI_EMAIL else {}
    in_use = sum(tile["state"] == "in_use" for tile in machine_tiles)
    return {
        "api_compatibility": ["15"],
        "space": settings.SPACEAPI_SPACE,
        "logo": settings.SPACEAPI_LOGO,
        "url": settings.SPACEAPI_URL or settings.PUBLIC_URL,
        "location": location,
        "contact": contact,
        "state": {
            "open": is_open(machine_tiles),
            "message": f"{in_use} of {len(machine_tiles)} machines in use",
        },
        "sensors": {
            "ext_machines": [{"id": tile["id"], "name": tile["name"], "state": tile["state"]} for tile in machine_tiles]
        },
    }


def cached_document() -> dict[str, Any]:
    global _cached
    with _lock:
        built, doc = _cached
        if time.monotonic() - built >= CACHE_SECONDS:
            doc = document()
            _cached = (time.monotonic(), doc)
        return doc


def forget() -> None:
    global _cached
    _cached = (-CACHE_SECONDS, {})


@require_GET
def spaceapi_view(request: HttpRequest) -> HttpResponse:
    if not settings.SPACEAPI_ENABLED:
        raise Http404
    response = JsonResponse(cached_document(), json_dumps_params={"ensure_ascii": False})
    response["Access-Control-Allow-Origin"] = "*"
    response["Cache-Control"] = f"public, max-age={int(CACHE_SECONDS)}"
    return response
