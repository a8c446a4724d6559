"""The portal shell: the admin site's branding and the helpers every admin page shares.

Site-wide pieces only; each app's admin lives in its own ``admin.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from functools import partial
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.dateparse import parse_date
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _
from django.utils.translation import gettext_noop
from import_export.admin import ExportActionMixin
from import_export.formats.base_formats import XLSX

from operations import audit


class SafeXLSX(XLSX):
    """XLSX whose formula escaping keeps numbers, dates and empty cells native.

    import-export's own escaping turns every cell into a string ("None", "0.5", "2025-01-01 10:00") before
    dropping a leading "="; here only text that a spreadsheet would run as a formula is touched, and it is kept
    readable: ``=1+1`` is written as the text ``'=1+1``.
    """

    def _escape_formulae(self, dataset: Any) -> None:
        for _row in range(dataset.height):
            row = dataset.lpop()
            dataset.append([f"'{c}" if isinstance(c, str) and c.startswith(FORMULA_STARTS) else c for c in row])


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class ExcelExportMixin(ExportActionMixin):
    """Export the current changelist (filters and search honoured) or the selected rows, as Excel only.

    One click: the Export button (and the *Export selected* action) downloads the file at once. import-export's
    form in between only offered one format and a checklist of developer labels ("Started At (started)").
    """

    show_change_form_export = False
    skip_export_form = True
    skip_export_form_from_action = True

    def get_export_formats(self) -> list[type]:
        return [SafeXLSX]

    def get_data_for_export(self, request: HttpRequest, queryset: QuerySet, **kwargs: Any) -> Any:
        # Native numbers and dates in the sheet (import-export only does this for its own XLSX class).
        kwargs["force_native_type"] = True
        data = super().get_data_for_export(request, queryset, **kwargs)
        # Headers in the user's language, capitalised; the sheet named after the list (was "Tablib Dataset").
        data.headers = [capfirst(str(header)) for header in data.headers]
        data.title = self._list_name()[:31]  # Excel's limit for a sheet name
        model = queryset.model
        params = {"count": len(data), "items": model._meta.verbose_name_plural}  # a lazy name: translated when shown
        audit.record(
            model,
            message=gettext_noop("Exported %(count)d %(items)s to Excel"),
            params=params,
            access=True,
            request=request,
        )
        return data

    def _list_name(self) -> str:
        return capfirst(str(self.model._meta.verbose_name_plural))

    def get_export_filename(self, request: HttpRequest, queryset: QuerySet, file_format: Any) -> str:
        return f"{self._list_name()} {timezone.localdate().isoformat()}.{file_format.get_extension()}"


class AddAnotherMixin:
    """Inlines may say their whole "Add another …" text (``add_another``), so Italian can agree in gender.

    Django builds it as "Add another %(verbose_name)s" for every model, and Italian's one translation, "Aggiungi
    un altro", read "Aggiungi un altro Tessera" for a feminine model ("un'altra tessera").
    """

    def get_inline_formsets(self, request: HttpRequest, formsets: Any, inline_instances: Any, obj: Any = None) -> Any:
        result = super().get_inline_formsets(request, formsets, inline_instances, obj)  # type: ignore[misc]
        for formset in result:
            text = getattr(formset.opts, "add_another", None)
            if text:
                formset.inline_formset_data = partial(_add_text, formset.inline_formset_data, text)
        return result


def _add_text(data: Any, text: str) -> str:
    options = json.loads(data())
    options["options"]["addText"] = str(text)
    return json.dumps(options)


class InUseDeleteMixin:
    """Refuse the delete page of a row that others still point to (PROTECT), saying why, instead of a 500."""

    def in_use_message(self, obj: Any) -> str | None:
        """Why ``obj`` cannot be deleted now, or None."""
        raise NotImplementedError

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict | None = None) -> HttpResponse:
        obj = self.get_object(request, object_id)  # type: ignore[attr-defined]
        message = self.in_use_message(obj) if obj is not None else None
        if message:
            self.message_user(request, message, messages.ERROR)  # type: ignore[attr-defined]
            opts = obj._meta
            return HttpResponseRedirect(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]))
        return super().delete_view(request, object_id, extra_context)  # type: ignore[misc]


admin.site.site_header = "Fab-O-Matic"
admin.site.site_title = "Fab-O-Matic"
admin.site.index_title = _("FabLab machines")
admin.site.site_url = None  # the portal is the whole site: no "View site" link
# The portal's top navigation (fabomatic/templatetags/fabomatic_portal.py) replaces the sidebar of every app: the
# sidebar took 300 px of a laptop's width and listed Django's internals first.
admin.site.enable_nav_sidebar = False
APP_ORDER = ("members", "machines", "telemetry")


def _staff_first(app_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Members, machines and boards first; Django's groups and axes' login records last."""
    rank = {label: i for i, label in enumerate(APP_ORDER)}
    return sorted(app_list, key=lambda app: rank.get(app["app_label"], len(APP_ORDER)))


_get_app_list = admin.site.get_app_list
admin.site.get_app_list = lambda request, app_label=None: _staff_first(  # type: ignore[method-assign]
    _get_app_list(request, app_label)
)


def format_hours(hours: float | None) -> str:
    """Hours as h:mm (an hour meter reading), '-' for nothing."""
    if hours is None:
        return "-"
    minutes = round(hours * 60)
    return f"{minutes // 60}:{minutes % 60:02d}"


def format_seconds(seconds: int | None) -> str:
    return "-" if seconds is None else format_hours(seconds / 3600)


def short_datetime(value: datetime | None) -> str:
    """A compact local date and time for list columns (e.g. 25/11/2026 16:22 in Italian)."""
    if value is None:
        return "-"
    return formats.date_format(timezone.localtime(value), "SHORT_DATETIME_FORMAT")


def badge(text: str, kind: str = "ok", title: str = "") -> str:
    """A small coloured label; ``kind`` is one of ok, warn, error, muted, info (see portal.css)."""
    return format_html('<span class="fab-badge fab-badge-{}" title="{}">{}</span>', kind, title, text)


REPLAY_ICON = (
    '<svg class="fab-icon" viewBox="0 0 16 16" width="14" height="14" aria-hidden="true">'
    '<path fill="currentColor" d="M8 3a5 5 0 1 1-4.9 6h1.6A3.5 3.5 0 1 0 8 4.5V7L4.5 3.8 8 .5z"/></svg>'
)


def replay_flag(replayed: bool) -> str:
    """An icon with a tooltip for records a board sent late, from its offline buffer."""
    if not replayed:
        return ""
    tip = _("Replayed: sent late by a board that was offline; the times are the board's own.")
    return format_html(
        '<span class="fab-replay" title="{}" aria-label="{}">{}</span>',
        tip,
        tip,
        mark_safe(REPLAY_ICON),  # a constant
    )


class CappedPaginator(Paginator):
    """Counts at most ``CAP`` rows: a COUNT(*) over a million uses costs more than the page itself.

    Beyond the cap the changelist says "more than N" (see the pagination templates).
    """

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        qs = self.object_list
        if isinstance(qs, QuerySet):
            return qs.order_by().values("pk")[: self.CAP + 1].count()
        return len(qs)

    @property
    def capped(self) -> bool:
        return self.count > self.CAP


class DateRangeFilter(admin.FieldListFilter):
    """From/to date inputs for a DateTimeField; both days inclusive, in the portal's time zone."""

    template = "admin/fabomatic/date_range_filter.html"

    def __init__(
        self, field: Any, request: HttpRequest, params: dict, model: type[Model], model_admin: Any, field_path: str
    ):
        self.param_from = f"{field_path}__from"
        self.param_to = f"{field_path}__to"
        super().__init__(field, request, params, model, model_admin, field_path)
        self.date_from = self._date(self.param_from)
        self.date_to = self._date(self.param_to)

    def _date(self, name: str) -> date | None:
        value = self.used_parameters.get(name)
        if isinstance(value, list):  # what Django stores (the stubs say a single value)
            value = value[-1] if value else None
        if not isinstance(value, str):
            return None
        try:
            return parse_date(value) if value else None
        except ValueError:
            return None

    def expected_parameters(self) -> list[str | None]:
        return [self.param_from, self.param_to]

    def has_output(self) -> bool:
        return True

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        tz = timezone.get_current_timezone()
        if self.date_from:
            queryset = queryset.filter(**{f"{self.field_path}__gte": datetime.combine(self.date_from, time(), tz)})
        if self.date_to:
            end = datetime.combine(self.date_to + timedelta(days=1), time(), tz)
            queryset = queryset.filter(**{f"{self.field_path}__lt": end})
        return queryset

    # The stubs type choices() as the stock filter template's items; this filter renders its own template.
    def choices(self, changelist: ChangeList) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        keep = [
            (key, value)
            for key, values in changelist.params.items()
            if key not in (self.param_from, self.param_to, "p")
            for value in (values if isinstance(values, list) else [values])
        ]
        yield {
            "param_from": self.param_from,
            "param_to": self.param_to,
            "value_from": self.date_from.isoformat() if self.date_from else "",
            "value_to": self.date_to.isoformat() if self.date_to else "",
            "hidden": keep,
            "selected": bool(self.date_from or self.date_to),
            "reset_url": changelist.get_query_string(remove=[self.param_from, self.param_to]),
        }
