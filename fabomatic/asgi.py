"""ASGI entry point: HTTP through Django, websockets (live dashboard) through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fabomatic.settings")
# Initialise Django before importing anything that touches models.
django_asgi_app = get_asgi_application()

from typing import Any  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import WebsocketDenier  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.signals import request_finished  # noqa: E402
from django.http.request import split_domain_port, validate_host  # noqa: E402

from fabomatic import memory  # noqa: E402
from machines.dashboard.routing import websocket_urlpatterns  # noqa: E402

memory.start_trimmer()
request_finished.connect(memory.trim_soon, dispatch_uid="fabomatic-trim-soon")

Origin = tuple[str, str, int]


def parse_origin(url: str) -> Origin | None:
    """(scheme, host, port) of an origin or URL, ws/wss read as http/https, default ports filled in."""
    parts = urlsplit(url.strip().lower())
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        return None
    return scheme, parts.hostname, port


class SameOriginValidator:
    """Let a websocket in only from a page of this portal: its Origin must be the socket's own origin (the scheme,
    host and port it was opened on, the host being one of ALLOWED_HOSTS), PUBLIC_URL, or one of
    CSRF_TRUSTED_ORIGINS. Channels' AllowedHostsOriginValidator compares host names only, so a page served on
    another port of the same host (any other service there) opened the dashboard with the viewer's cookies."""

    def __init__(self, application: Any) -> None:
        self.application = application

    def allowed(self, scope: dict[str, Any]) -> bool:
        headers = dict(scope.get("headers", []))
        origin = parse_origin(headers.get(b"origin", b"").decode("latin1"))
        if origin is None:
            return False
        trusted = {parse_origin(settings.PUBLIC_URL), *(parse_origin(o) for o in settings.CSRF_TRUSTED_ORIGINS)}
        if origin in trusted:
            return True
        host = headers.get(b"host", b"").decode("latin1")
        domain, _port = split_domain_port(host)
        if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
            return False
        scheme = scope.get("scheme")
        if scheme is None:
            # Daphne puts no scheme in a websocket's scope, over TLS or not (make run serves HTTPS itself): a port
            # serves one scheme only, so the socket's origin is the page's scheme with the Host's host and port.
            scheme = origin[0]
        return origin == parse_origin(f"{scheme}://{host}")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if self.allowed(scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
memory.freeze_startup_objects()
