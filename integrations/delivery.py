"""Webhook delivery: the outbox fanned out to subscriptions, signed POSTs, retries with backoff, the log's purge.

Run by ``manage.py deliver_webhooks`` (its own process: never the bridge, never a portal request). Each pass:

1. :func:`dispatch` turns new outbox rows into one :class:`~integrations.models.Delivery` per active subscription
   that wants the event;
2. :func:`deliver_due` POSTs the deliveries whose next attempt has come, one at a time, each bounded by
   ``WEBHOOK_TIMEOUT``; a 2xx answer delivers, anything else (another status, a timeout, a refused connection)
   schedules the next attempt after :func:`backoff` until ``WEBHOOK_RETRY_HOURS`` after the first, then gives up.

The body is JSON; ``X-Fabomatic-Signature`` is ``sha256=`` and the hex HMAC-SHA256, keyed with the subscription's
secret, of ``"<X-Fabomatic-Timestamp>.<body>"`` (README "Webhooks" shows how a receiver checks it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone

from . import outbox
from .models import Delivery, Event, Subscription

logger = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 30
LONGEST_WAIT_SECONDS = 3600
PER_RECEIVER = 20  # deliveries to one webhook per pass
USER_AGENT = "Fab-O-Matic-Webhooks/1"


def backoff(attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failure: 30 s, 1 min, 2 min, … doubling up to an hour."""
    return timedelta(seconds=min(FIRST_RETRY_SECONDS * 2 ** max(0, attempts - 1), LONGEST_WAIT_SECONDS))


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def url_allowed(url: str) -> bool:
    return url.startswith("https://") or (settings.WEBHOOK_ALLOW_HTTP and url.startswith("http://"))


def dispatch(now: datetime | None = None) -> int:
    """One delivery per new outbox event and subscription wanting it. Returns how many were created."""
    now = now or timezone.now()
    created = 0
    with transaction.atomic():
        events = list(Event.objects.filter(dispatched=False).order_by("pk")[:500])
        if not events:
            return 0
        subscriptions = list(Subscription.objects.filter(active=True).only("pk", "events"))
        rows = [
            Delivery(event=event, subscription=sub, first_attempt_at=now, next_attempt_at=now)
            for event in events
            for sub in subscriptions
            if event.type in sub.events
        ]
        Delivery.objects.bulk_create(rows)
        Event.objects.filter(pk__in=[e.pk for e in events]).update(dispatched=True)
        created = len(rows)
    return created


@dataclass
class Answer:
    code: int | None
    error: str


Poster = Callable[[str, bytes, dict[str, str], float], Answer]


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
    """One POST, never following redirects; any failure is an answer, never an exception.

    requests is imported here: the portal imports this module for its webhook pages, and only the delivery worker
    posts (requests is 5 MB of every portal process's memory budget otherwise)."""
    import requests

    try:
        # stream: the answer's body is never read (a receiver could send gigabytes); its status is all we keep.
        response = requests.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False, stream=True)
    except requests.Timeout:
        return Answer(None, f"no answer within {timeout:g} s")
    except requests.RequestException as exc:
        return Answer(None, type(exc).__name__ + ": " + str(exc)[:200])
    response.close()
    return Answer(response.status_code, "" if 200 <= response.status_code < 300 else f"HTTP {response.status_code}")


def body_of(event: Event) -> bytes:
    payload = {"id": event.pk, "event": event.type, "created_at": event.created_at.isoformat(), "data": event.data}
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def attempt(delivery: Delivery, now: datetime, send: Poster = post) -> Delivery:
    """Try one delivery once and record the answer (delivered, next attempt, or given up)."""
    sub, event = delivery.subscription, delivery.event
    body = body_of(event)
    timestamp = int(now.timestamp())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Fabomatic-Event": event.type,
        "X-Fabomatic-Delivery": str(delivery.pk),
        "X-Fabomatic-Timestamp": str(timestamp),
        "X-Fabomatic-Signature": sign(sub.secret, timestamp, body),
    }
    if not url_allowed(sub.url):
        answer = Answer(None, "http:// refused (WEBHOOK_ALLOW_HTTP is off)")
    else:
        answer = send(sub.url, body, headers, settings.WEBHOOK_TIMEOUT)
    delivery.attempts += 1
    delivery.last_attempt_at = now
    delivery.response_code = answer.code
    delivery.last_error = answer.error[:300]
    if answer.code is not None and 200 <= answer.code < 300:
        delivery.status, delivery.next_attempt_at = Delivery.Status.DELIVERED, None
    else:
        upcoming = now + backoff(delivery.attempts)
        if upcoming > delivery.first_attempt_at + timedelta(hours=settings.WEBHOOK_RETRY_HOURS):
            delivery.status, delivery.next_attempt_at = Delivery.Status.FAILED, None
            logger.warning("webhook %s to %s given up after %s attempts", event.type, sub.url, delivery.attempts)
        else:
            delivery.next_attempt_at = upcoming
    delivery.save(
        update_fields=["attempts", "last_attempt_at", "response_code", "last_error", "status", "next_attempt_at"]
    )
    return delivery


def deliver_due(now: datetime | None = None, send: Poster = post, per_receiver: int = PER_RECEIVER) -> int:
    """Attempt the deliveries whose time has come, oldest first, at most ``per_receiver`` per webhook in one pass,
    and none more to a webhook once one to it failed in this pass: a dead or slow receiver costs one timeout per
    pass, never the other receivers' turn. Returns how many were attempted."""
    now = now or timezone.now()
    due = Delivery.objects.filter(status=Delivery.Status.PENDING, next_attempt_at__lte=now)
    attempted = 0
    for subscription_id in sorted(set(due.values_list("subscription_id", flat=True))):
        rows = due.filter(subscription_id=subscription_id).select_related("event", "subscription")
        for delivery in rows.order_by("next_attempt_at", "pk")[:per_receiver]:
            attempted += 1
            if attempt(delivery, now, send).status != Delivery.Status.DELIVERED:
                break
    return attempted


def send_again(deliveries: Any, now: datetime | None = None) -> int:
    """Staff's "send again": pending at once, with a new retry period."""
    now = now or timezone.now()
    return deliveries.update(
        status=Delivery.Status.PENDING, first_attempt_at=now, next_attempt_at=now, last_error="", response_code=None
    )


def purge_log(now: datetime | None = None) -> int:
    """Deliveries and events older than ``WEBHOOK_LOG_DAYS`` (``manage.py purge``). Returns the rows deleted."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.WEBHOOK_LOG_DAYS)
    pending = Delivery.Status.PENDING
    deliveries, _ = Delivery.objects.filter(first_attempt_at__lt=cutoff).exclude(status=pending).delete()
    old = Event.objects.filter(created_at__lt=cutoff, dispatched=True).exclude(deliveries__status=pending)
    events, _ = old.delete()
    return deliveries + events


EXPIRING_EVERY = 600.0  # seconds between two looks for authorizations about to lapse


def run(stop: threading.Event, interval: float = 1.0, *, once: bool = False) -> None:
    """The worker's loop until ``stop`` is set: dispatch, deliver what is due, and every :data:`EXPIRING_EVERY`
    seconds record the authorizations about to lapse. A failed pass (the database away) is logged and retried."""
    last_expiring = -EXPIRING_EVERY
    while not stop.is_set():
        busy = False
        try:
            if time.monotonic() - last_expiring >= EXPIRING_EVERY:
                outbox.authorizations_expiring(settings.TRAINING_REMINDER_DAYS)
                last_expiring = time.monotonic()
            dispatch()
            busy = deliver_due() > 0  # more may be due at once; failures were rescheduled into the future
        except Exception:
            logger.exception("webhook delivery pass failed")
            close_old_connections()
        if once:
            return
        if not busy:
            stop.wait(interval)
