"""The portal's Prometheus metrics: ``/metrics`` with request counts and latencies per view, and the fleet's gauges.

Who may read them is telemetry.metrics.allowed: a client on this machine that came straight in (not through the
reverse proxy), or one with ``Authorization: Bearer <METRICS_TOKEN>``.

The counts are this daphne process's since it started (scripts/web.sh runs one): a restart sets them back to zero,
which Prometheus's rate() and increase() take as a counter reset.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseForbidden
from django.utils.decorators import sync_and_async_middleware
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

from telemetry.metrics import FleetCollector, allowed

# Pages of the portal: most render in tens of milliseconds, exports and reports in seconds.
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "fabomatic_http_requests",
    "Requests answered by the portal, per view (URL name), method and status class.",
    ["view", "method", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "fabomatic_http_request_seconds",
    "Seconds the portal took to answer a request, per view (URL name).",
    ["view"],
    buckets=REQUEST_BUCKETS,
    registry=REGISTRY,
)
FLEET = FleetCollector()
REGISTRY.register(FLEET)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)


def view_label(request: HttpRequest) -> str:
    """The URL's name (``admin:machines_machine_changelist``): one series per page, never per object or query."""
    match = getattr(request, "resolver_match", None)
    if match is not None:
        return match.view_name or match.route or "unnamed"
    if request.path.startswith(f"/{settings.STATIC_URL.lstrip('/')}"):
        return "static"  # answered by WhiteNoise before URL resolution
    return "unresolved"  # a 404 of an unknown address, or refused before resolution (e.g. a disallowed Host)


def record(request: HttpRequest, response: HttpResponseBase, seconds: float) -> None:
    view = view_label(request)
    method = request.method if request.method in METHODS else "other"
    REQUESTS.labels(view, method, f"{response.status_code // 100}xx").inc()
    LATENCY.labels(view).observe(seconds)


@sync_and_async_middleware
def request_metrics(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    """Time every request through the rest of the middleware and the view (async under daphne, sync in tests)."""
    if iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> HttpResponseBase:
            start = time.perf_counter()
            response = await get_response(request)
            record(request, response, time.perf_counter() - start)
            return response

        return async_middleware

    def middleware(request: HttpRequest) -> HttpResponseBase:
        start = time.perf_counter()
        response = get_response(request)
        record(request, response, time.perf_counter() - start)
        return response

    return middleware


def request_allowed(request: HttpRequest) -> bool:
    headers = {name.lower(): value for name, value in request.headers.items()}
    return allowed(request.META.get("REMOTE_ADDR", ""), headers, settings.METRICS_TOKEN)


@never_cache
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus exposition (text format, or OpenMetrics when the scraper asks for it)."""
    if not request_allowed(request):
        return HttpResponseForbidden(
            b"Forbidden: only local clients or a bearer token (METRICS_TOKEN).\n", content_type="text/plain"
        )
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encode(REGISTRY), content_type=content_type)
