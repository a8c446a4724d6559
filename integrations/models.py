"""Webhook subscriptions, the outbox of events and their deliveries (:mod:`integrations.webhooks`)."""

from __future__ import annotations

import secrets

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class EventType(models.TextChoices):
    USE_STARTED = "use.started", _("use started")
    USE_ENDED = "use.ended", _("use ended")
    MACHINE_BLOCKED = "machine.blocked", _("machine blocked")
    MACHINE_UNBLOCKED = "machine.unblocked", _("machine unblocked")
    FAULT_REPORTED = "fault.reported", _("fault reported")
    CHECK_REQUIRED = "check.required", _("to check (a check after use opened)")
    MAINTENANCE_DUE = "maintenance.due", _("maintenance due")
    UNKNOWN_CARD = "card.unknown", _("unknown card swiped")
    AUTHORIZATION_EXPIRING = "authorization.expiring", _("authorization expiring")


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class Subscription(models.Model):
    url = models.URLField(_("URL"), max_length=500, help_text=_("Where the events are POSTed (https)."))
    description = models.CharField(_("description"), max_length=200, blank=True)
    events = models.JSONField(_("events"), default=list)
    # HMAC needs the secret itself to sign, so it cannot be stored hashed: it is shown once, never again in the portal.
    secret = models.CharField(_("secret"), max_length=64, default=new_secret, editable=False)
    active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(_("created"), default=timezone.now, editable=False)

    class Meta:
        ordering = ["url"]
        verbose_name = _("webhook")
        verbose_name_plural = _("webhooks")

    def __str__(self) -> str:
        return self.description or self.url


class Event(models.Model):
    """The outbox: written in the transaction of the change it reports, fanned out to deliveries by the worker."""

    type = models.CharField(_("event"), max_length=40, choices=EventType.choices)
    data = models.JSONField(_("data"), default=dict)
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    dispatched = models.BooleanField(default=False, editable=False)
    # Events that must happen once (a plan becoming due at a meter reading, an authorization expiring on a date).
    key = models.CharField(max_length=120, null=True, blank=True, unique=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("event")
        verbose_name_plural = _("events")
        indexes = [models.Index(fields=["id"], condition=models.Q(dispatched=False), name="event_undispatched")]

    def __str__(self) -> str:
        return f"{self.type} #{self.pk}"


class Delivery(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        DELIVERED = "delivered", _("delivered")
        FAILED = "failed", _("given up")

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries", verbose_name=_("event"))
    subscription = models.ForeignKey(
        Subscription, on_delete=models.CASCADE, related_name="deliveries", verbose_name=_("webhook")
    )
    status = models.CharField(_("status"), max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    # Retries stop this long after the first try (WEBHOOK_RETRY_HOURS); "send again" starts a new period.
    first_attempt_at = models.DateTimeField(_("first attempt"), default=timezone.now)
    next_attempt_at = models.DateTimeField(_("next attempt"), null=True, blank=True)
    last_attempt_at = models.DateTimeField(_("last attempt"), null=True, blank=True)
    response_code = models.PositiveIntegerField(_("response code"), null=True, blank=True)
    last_error = models.CharField(_("last error"), max_length=300, blank=True)

    class Meta:
        ordering = ["-first_attempt_at", "-pk"]
        verbose_name = _("webhook delivery")
        verbose_name_plural = _("webhook deliveries")
        indexes = [
            models.Index(fields=["next_attempt_at"], condition=models.Q(status="pending"), name="delivery_pending"),
        ]

    def __str__(self) -> str:
        return f"{self.event.type} → {self.subscription}"
