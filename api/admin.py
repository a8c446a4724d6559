"""Portal pages for API tokens: create one (its secret shown once), revoke it (confirmed, audited).

Portal administrators only. A token acts as the administrator who made it (their portal rights, never more), so a
token is never made for someone else; its scope (read-only or read and write) is chosen at creation and fixed.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.cache import add_never_cache_headers
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, gettext_noop

from fabomatic.admin import short_datetime
from fabomatic.http import AuthenticatedHttpRequest, acting_member
from machines.confirm import confirm_page, confirmed, log_action
from machines.kiosk_admin import may_manage  # portal administrators, as for kiosk screens
from operations.audited import AuditedAdmin

from . import tokens
from .models import ApiToken
from .routing import API_URLCONF

FIELDS = ("name", "scope", "owner", "created_at", "last_used_at", "revoked_at")
SECRET_ATTRIBUTE = "_fabomatic_api_secret"  # the new secret, from save_model to response_add of one request


@admin.register(ApiToken)
class ApiTokenAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ["name", "scope", "status", "owner", "created_at", "last_used_at"]
    list_display_links = ["name"]
    list_filter = ["scope"]
    readonly_fields = ["owner", "created_at", "last_used_at", "revoked_at"]
    search_fields = ["name"]
    change_form_template = "api/admin/change_form.html"

    def has_module_permission(self, request: HttpRequest) -> bool:
        return may_manage(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_manage(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return may_manage(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Only a live token's name changes; its scope and owner are fixed (a new scope is a new token)."""
        return may_manage(request) and (obj is None or obj.revoked_at is None)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Only a revoked token is deleted (tidying the list): a working one is revoked first, and said so."""
        return may_manage(request) and obj is not None and obj.revoked_at is not None

    @admin.display(description=gettext_lazy("status"), ordering="revoked_at")
    def status(self, token: ApiToken) -> str:
        if token.revoked_at is not None:
            return _("Revoked on %(when)s") % {"when": short_datetime(token.revoked_at)}
        return _("Active")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return ("name", "scope") if obj is None else FIELDS

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [] if obj is None else [*self.readonly_fields, "scope"]

    # --- creating one: the secret, once -------------------------------------------------------------------

    def save_model(self, request: HttpRequest, obj: ApiToken, form: ModelForm, change: bool) -> None:
        if not change:
            secret = tokens.PREFIX + tokens.new_secret_body()
            obj.token_hash = tokens.hash_secret(secret)
            obj.owner = acting_member(request)
            setattr(request, SECRET_ATTRIBUTE, secret)
        super().save_model(request, obj, form, change)

    def response_add(self, request: HttpRequest, obj: ApiToken, post_url_continue: str | None = None) -> HttpResponse:
        secret = getattr(request, SECRET_ATTRIBUTE, None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Secret of the API token “%(name)s”") % {"name": obj.name},
            "token": obj,
            "secret": secret,
            "api_url": settings.PUBLIC_URL + reverse("api-schema", urlconf=API_URLCONF).removesuffix("schema/"),
        }
        response = TemplateResponse(request, "api/admin/secret.html", context)
        response["Referrer-Policy"] = "no-referrer"
        add_never_cache_headers(response)  # the browser keeps no copy of the page
        return response

    # --- revoke: confirmed, recorded ----------------------------------------------------------------------

    def get_urls(self) -> list:
        revoke = path(
            "<int:token_id>/revoke/", self.admin_site.admin_view(self.revoke_view), name="api_apitoken_revoke"
        )
        return [revoke, *super().get_urls()]

    def revoke_view(self, request: AuthenticatedHttpRequest, token_id: int) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not may_manage(request):
            raise PermissionDenied
        token = get_object_or_404(ApiToken, pk=token_id)
        back = reverse("admin:api_apitoken_change", args=[token.pk])
        if not confirmed(request):
            return confirm_page(
                request,
                self,
                title=_("Revoke API token"),
                question=_("Revoke the API token “%(name)s”?") % {"name": token.name},
                lines=[
                    _("Whatever uses it is refused (401) from its next request."),
                    _("This cannot be undone: to connect it again, create a new token."),
                ],
                confirm_label=_("Yes, revoke it"),
                cancel_url=back,
                danger=True,
            )
        if tokens.revoke(token):
            message = gettext_noop("API token revoked.")
            log_action(self, request, token, message, changes={"revoked_at": [None, str(token.revoked_at)]})
            self.message_user(request, _("The API token “%(name)s” is revoked.") % {"name": token.name})
        else:
            self.message_user(request, _("This API token is revoked: it stays so."), messages.WARNING)
        return HttpResponseRedirect(back)
