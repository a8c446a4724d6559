"""Portal pages for the lab's kiosk screens: create one (its address is shown once), replace its address, revoke it.

Portal administrators only (least privilege: the address opens a page with no login). The rules are in
:mod:`machines.kiosk`; every change goes to the admin's history and the audit trail.
"""

from __future__ import annotations

from typing import Any

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
from operations.audited import AuditedAdmin

from . import kiosk
from .confirm import confirm_page, confirmed, log_action
from .models import KioskScreen
from .safety import is_portal_admin

FIELDS = ("name", "created_by", "created_at", "last_seen_at", "revoked_at")
SECRET_ATTRIBUTE = "_fabomatic_kiosk_secret"  # the new secret, from save_model to response_add of one request


def may_manage(request: HttpRequest) -> bool:
    user = request.user
    return bool(user.is_active and user.is_staff and is_portal_admin(acting_member(request)))


@admin.register(KioskScreen)
class KioskScreenAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ["name", "status", "created_by", "created_at", "last_seen_at"]
    list_display_links = ["name"]
    fields = FIELDS
    readonly_fields = ["created_by", "created_at", "last_seen_at", "revoked_at"]
    search_fields = ["name"]
    change_form_template = "kiosk/admin/change_form.html"

    # --- who may: portal administrators only -----------------------------------------------------------------

    def has_module_permission(self, request: HttpRequest) -> bool:
        return may_manage(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_manage(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return may_manage(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_manage(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Only a revoked screen is deleted (tidying the list): a working address is revoked first, and said so."""
        return may_manage(request) and obj is not None and obj.revoked_at is not None

    # --- the list ------------------------------------------------------------------------------------------

    @admin.display(description=gettext_lazy("status"), ordering="revoked_at")
    def status(self, screen: KioskScreen) -> str:
        if screen.revoked_at is not None:
            return _("Revoked on %(when)s") % {"when": short_datetime(screen.revoked_at)}
        return _("Active")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return []
        return [*self.readonly_fields, *(["name"] if obj.revoked_at is not None else [])]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return ("name",) if obj is None else FIELDS

    # --- creating one: the address, once ------------------------------------------------------------------

    def save_model(self, request: HttpRequest, obj: KioskScreen, form: ModelForm, change: bool) -> None:
        if not change:
            secret, obj.token_hash = kiosk.new_secret()
            obj.created_by = acting_member(request)
            setattr(request, SECRET_ATTRIBUTE, secret)
        super().save_model(request, obj, form, change)

    def response_add(
        self, request: HttpRequest, obj: KioskScreen, post_url_continue: str | None = None
    ) -> HttpResponse:
        secret = getattr(request, SECRET_ATTRIBUTE, None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        return self.address_page(request, obj, secret, created=True)

    def address_page(self, request: HttpRequest, screen: KioskScreen, secret: str, *, created: bool) -> HttpResponse:
        """The screen's address, shown this once (no-store: the browser keeps no copy of the page)."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Address of the kiosk screen “%(name)s”") % {"name": screen.name},
            "screen": screen,
            "url": kiosk.kiosk_url(secret, request),
            "created": created,
        }
        response = TemplateResponse(request, "kiosk/admin/address.html", context)
        response["Referrer-Policy"] = "no-referrer"
        add_never_cache_headers(response)
        return response

    # --- revoke and replace: confirmed, recorded ----------------------------------------------------------

    def get_urls(self) -> list:
        return [
            *(
                path(
                    f"<int:screen_id>/{action}/",
                    self.admin_site.admin_view(self.action_view),
                    {"action": action},
                    name=f"machines_kioskscreen_{action}",
                )
                for action in ("revoke", "replace")
            ),
            *super().get_urls(),
        ]

    def action_view(self, request: AuthenticatedHttpRequest, screen_id: int, action: str) -> HttpResponse:
        """Revoke the screen, or give it a new address (POST only, then a confirmation)."""
        if action not in ("revoke", "replace"):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not may_manage(request):
            raise PermissionDenied
        screen = get_object_or_404(KioskScreen, pk=screen_id)
        back = reverse("admin:machines_kioskscreen_change", args=[screen.pk])
        if screen.revoked_at is not None:
            self.message_user(request, _("This kiosk screen is revoked: it stays so."), messages.WARNING)
            return HttpResponseRedirect(back)
        if action == "revoke":
            return self.revoke(request, screen, back)
        return self.replace(request, screen, back)

    def _log(self, request: HttpRequest, screen: KioskScreen, message: str, changes: dict[str, list[Any]]) -> None:
        """History and audit trail; ``message`` a msgid (``gettext_noop``), shown in the reader's language."""
        log_action(self, request, screen, message, changes=changes)

    def revoke(self, request: HttpRequest, screen: KioskScreen, back: str) -> HttpResponse:
        if not confirmed(request):
            return confirm_page(
                request,
                self,
                title=_("Revoke kiosk screen"),
                question=_("Revoke the kiosk screen “%(name)s”?") % {"name": screen.name},
                lines=[
                    _("Its address stops working: the screen goes blank within a minute."),
                    _("This cannot be undone: to use the screen again, create a new one."),
                ],
                confirm_label=_("Yes, revoke it"),
                cancel_url=back,
                danger=True,
            )
        if kiosk.revoke(screen):
            changes = {"revoked_at": [None, str(screen.revoked_at)]}
            self._log(request, screen, gettext_noop("Kiosk screen revoked."), changes)
        self.message_user(request, _("The kiosk screen “%(name)s” is revoked.") % {"name": screen.name})
        return HttpResponseRedirect(back)

    def replace(self, request: HttpRequest, screen: KioskScreen, back: str) -> HttpResponse:
        if not confirmed(request):
            return confirm_page(
                request,
                self,
                title=_("Replace the address"),
                question=_("Give the kiosk screen “%(name)s” a new address?") % {"name": screen.name},
                lines=[
                    _("The current address stops working at once: open the new one on the screen."),
                    _("The new address is shown once, on the next page."),
                ],
                confirm_label=_("Yes, replace it"),
                cancel_url=back,
                danger=True,
            )
        try:
            secret = kiosk.replace_secret(screen)
        except ValueError:  # revoked meanwhile
            self.message_user(request, _("This kiosk screen is revoked: it stays so."), messages.WARNING)
            return HttpResponseRedirect(back)
        message = gettext_noop("Kiosk screen address replaced: the old one no longer works.")
        self._log(request, screen, message, {})
        return self.address_page(request, screen, secret, created=False)
