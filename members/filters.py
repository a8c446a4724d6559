"""List filters on members' roles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.http import HttpRequest

from .models import Role

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise


class RoleFilter(admin.RelatedFieldListFilter):
    """A filter by role whose options say what each role grants, as the member form's role choice does
    ("Fab Staff — ⚠ EVERY machine, blocked ones too, maintenance (level 2 on boards)")."""

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> list[tuple[str, StrOrPromise]]:
        ordering = self.field_admin_ordering(field, request, model_admin) or ("name",)
        return [(str(role.pk), role.choice_label()) for role in Role.objects.order_by(*ordering)]
