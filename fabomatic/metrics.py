"""The portal's Prometheus metrics: ``/metrics`` with request counts and latencies per view, and the fleet's gauges.

Who may read them is telemetry.metrics.allowed: a client on this machine that came straight in (not through the
reverse proxy), or one with ``Authorization: Bearer <METRICS_TOKEN>``.

The counts are this daphne process's since it started (scripts/web.sh runs one): a restart sets them back to zero,
which Prometheus's rate() and increase() take as a counter reset.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator
from functools import cache
from typing import TYPE_CHECKING, Any

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseForbidden
from django.utils.decorators import sync_and_async_middleware
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from telemetry.metrics import FleetCollector

# Pages of the portal: most render in tens of milliseconds, exports and reports in seconds.
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestCounts:
    """Requests per (view, method, status class) and a latency histogram per view, in plain Python.

    prometheus-client is imported only when /metrics is first scraped (:func:`registry`): a portal nobody scrapes
    does not carry it (its memory budget on a Raspberry Pi, README → Memory). Thread-safe: daphne runs sync views in
    threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}
        self.latency: dict[str, list[float]] = {}  # per view: a count per bucket (+Inf last), then the sum

    def record(self, view: str, method: str, status: str, seconds: float) -> None:
        with self._lock:
            key = (view, method, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            row = self.latency.setdefault(view, [0.0] * (len(REQUEST_BUCKETS) + 2))
            row[bisect.bisect_left(REQUEST_BUCKETS, seconds)] += 1  # le: a bucket holds what is <= its bound
            row[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily

        with self._lock:
            requests = dict(self.requests)
            latency = {view: list(row) for view, row in self.latency.items()}
        counter = CounterMetricFamily(
            "fabomatic_http_requests",
            "Requests answered by the portal, per view (URL name), method and status class.",
            labels=["view", "method", "status"],
        )
        for labels, count in sorted(requests.items()):
            counter.add_metric(list(labels), count)
        yield counter
        histogram = HistogramMetricFamily(
            "fabomatic_http_request_seconds",
            "Seconds the portal took to answer a request, per view (URL name).",
            labels=["view"],
        )
        for view, row in sorted(latency.items()):
            cumulative, buckets = 0.0, []
            for bound, in_bucket in zip((*map(str, REQUEST_BUCKETS), "+Inf"), row[:-1], strict=True):
                cumulative += in_bucket
                buckets.append((bound, cumulative))
            histogram.add_metric([view], buckets, sum_value=row[-1])
        yield histogram


COUNTS = RequestCounts()


@cache
def registry() -> CollectorRegistry:
    """The portal's registry, made at the first scrape: the request counts, the fleet's gauges, the process."""
    from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

    made = CollectorRegistry()
    made.register(COUNTS)  # a collector: it has collect()
    made.register(fleet())
    ProcessCollector(registry=made)
    PlatformCollector(registry=made)
    GCCollector(registry=made)
    return made


@cache
def fleet() -> FleetCollector:
    from telemetry.metrics import FleetCollector

    return FleetCollector()


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
    COUNTS.record(view, method, f"{response.status_code // 100}xx", seconds)


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
    from telemetry.metrics import allowed

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
    from prometheus_client.exposition import choose_encoder

    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encode(registry()), content_type=content_type)
