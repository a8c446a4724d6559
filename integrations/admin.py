"""Portal pages for webhooks: subscriptions (portal administrators only, the secret shown once) and the delivery log
with its "send again" action. Changes to subscriptions are in the audit trail (settings
``AUDITLOG_INCLUDE_TRACKING_MODELS``, secret excluded); "send again" is recorded explicitly."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, gettext_noop, ngettext

from fabomatic.http import acting_member
from machines.safety import is_portal_admin
from operations import audit
from operations.audited import AuditedAdmin

from . import delivery
from .models import Delivery, EventType, Subscription

SECRET_ATTRIBUTE = "_fabomatic_webhook_secret"


def may_manage(request: HttpRequest) -> bool:
    user = request.user
    return bool(user.is_active and user.is_staff and is_portal_admin(acting_member(request)))


class PortalAdminsOnly:
    def has_module_permission(self, request: HttpRequest) -> bool:
        return may_manage(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_manage(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return may_manage(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_manage(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_manage(request)


class SubscriptionForm(forms.ModelForm):
    url = forms.URLField(
        label=gettext_lazy("URL"),
        max_length=500,
        assume_scheme="https",
        help_text=gettext_lazy("Where the events are POSTed (https)."),
    )
    events = forms.MultipleChoiceField(
        label=gettext_lazy("events"), choices=EventType.choices, widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = Subscription
        fields = ["url", "description", "events", "active"]

    def clean_url(self) -> str:
        url: str = self.cleaned_data["url"]
        if not delivery.url_allowed(url):
            raise forms.ValidationError(
                _("The address must start with https:// (http:// only when WEBHOOK_ALLOW_HTTP is on).")
            )
        return url


@admin.register(Subscription)
class SubscriptionAdmin(PortalAdminsOnly, AuditedAdmin, admin.ModelAdmin):
    form = SubscriptionForm
    list_display = ["url", "description", "event_list", "active", "created_at"]
    list_filter = ["active"]
    search_fields = ["url", "description"]

    @admin.display(description=gettext_lazy("events"))
    def event_list(self, sub: Subscription) -> str:
        labels = dict(EventType.choices)
        return ", ".join(str(labels.get(e, e)) for e in sub.events)

    def save_model(self, request: HttpRequest, obj: Subscription, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            setattr(request, SECRET_ATTRIBUTE, obj.secret)

    def response_add(
        self, request: HttpRequest, obj: Subscription, post_url_continue: str | None = None
    ) -> HttpResponse:
        secret = getattr(request, SECRET_ATTRIBUTE, None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Secret of the webhook “%(name)s”") % {"name": obj},
            "subscription": obj,
            "secret": secret,
        }
        response = TemplateResponse(request, "integrations/admin/secret.html", context)
        response["Referrer-Policy"] = "no-referrer"
        add_never_cache_headers(response)
        return response


@admin.register(Delivery)
class DeliveryAdmin(PortalAdminsOnly, admin.ModelAdmin):
    list_display = [
        "event_type",
        "subscription",
        "status",
        "response_code",
        "attempts",
        "last_attempt_at",
        "next_attempt_at",
        "last_error",
    ]
    list_filter = ["status", "event__type", "subscription"]
    list_select_related = ["event", "subscription"]
    readonly_fields = [f.name for f in Delivery._meta.fields] + ["payload"]
    actions = ["send_again"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=gettext_lazy("event"), ordering="event__type")
    def event_type(self, row: Delivery) -> str:
        return row.event.get_type_display()

    @admin.display(description=gettext_lazy("body"))
    def payload(self, row: Delivery) -> str:
        return delivery.body_of(row.event).decode()

    @admin.action(description=gettext_lazy("Send again"), permissions=["view"])
    def send_again(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        rows = list(queryset.select_related("event", "subscription"))
        n = delivery.send_again(Delivery.objects.filter(pk__in=[r.pk for r in rows]))
        for row in rows:
            audit.record(
                row.subscription,
                message=gettext_noop("Webhook delivery %(delivery)s of %(event)s queued to be sent again."),
                params={"delivery": row.pk, "event": row.event.type},
            )
        self.message_user(
            request, ngettext("%(n)d delivery queued again.", "%(n)d deliveries queued again.", n) % {"n": n}
        )
