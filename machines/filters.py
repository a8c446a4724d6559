"""The list filters of the machines' and history pages: drop-downs for long lists, two-way conditions."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from members.models import Member

from .models import Machine, MaintenancePlan, Use

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise


class SelectFilter(admin.SimpleListFilter):
    """A filter shown as a drop-down: lists of machines or members are too long for links."""

    template = "admin/fabomatic/select_filter.html"
    field = ""

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value and value.isdigit():
            return queryset.filter(**{f"{self.field}_id": int(value)})
        return queryset

    def choices(self, changelist: Any) -> Any:
        """Django's choices with the query string built once: one per option cost 3,000 urlencodes a page."""
        value = self.value()
        yield {
            "selected": value is None,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": _("All"),
        }
        pattern = changelist.get_query_string({self.parameter_name: "0"}).replace(f"{self.parameter_name}=0", "\0")
        for pk, title in self.lookup_choices:
            yield {
                "selected": value == pk,
                "query_string": pattern.replace("\0", f"{self.parameter_name}={pk}"),
                "display": title,
            }


class MachineFilter(SelectFilter):
    title = gettext_lazy("machine")
    parameter_name = "machine__id__exact"  # the name Django's own related filter would use
    field = "machine"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(pk), name) for pk, name in Machine.objects.order_by("name").values_list("pk", "name")]


class MemberFilter(SelectFilter):
    title = gettext_lazy("member")
    parameter_name = "member__id__exact"
    field = "member"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        members = Member.objects.filter(deleted_at__isnull=True)
        value = self.value() or ""
        if value.isdigit():  # keep an erased or anonymous member selectable once chosen
            members = Member.objects.filter(Q(deleted_at__isnull=True) | Q(pk=int(value)))
        return [(str(m.pk), str(m)) for m in members.only("pk", "first_name", "last_name", "email")]


def open_uses() -> QuerySet[Use]:
    return Use.objects.filter(ended_at__isnull=True)  # the partial index one_open_use_per_machine


def flagged_uses() -> QuerySet[Use]:
    return Use.objects.exclude(flag=Use.Flag.NONE)  # the partial index use_flagged


def few(rows: Callable[[], QuerySet[Use]]) -> Q:
    """Uses among a few rows that a partial index holds (the open ones, the flagged ones), as ``id IN (…)``: read
    from that index and sorted, instead of walking the whole history's time index to find them (SQLite chose the
    walk: 357 ms for the open uses of tests/test_api_live.py's 1,000,000 uses, against 10 ms for any other page).
    The portal's uses list and the API share them."""
    return Q(pk__in=rows().order_by().values("pk"))


class UseStatusFilter(admin.SimpleListFilter):
    title = gettext_lazy("status")
    parameter_name = "open"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", _("In progress")), ("no", _("Ended")), ("flagged", _("To review (implausible duration)"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Use]) -> QuerySet[Use]:
        if self.value() == "yes":
            return queryset.filter(few(open_uses))
        if self.value() == "no":
            return queryset.filter(ended_at__isnull=False)
        if self.value() == "flagged":
            return queryset.filter(few(flagged_uses))
        return queryset


class ConditionFilter(admin.SimpleListFilter):
    """Two choices: the rows that meet ``condition()`` (``meets``: parameter value, label) and the others."""

    meets: tuple[str, StrOrPromise]
    fails: tuple[str, StrOrPromise]

    def condition(self) -> Q | Exists:
        raise NotImplementedError

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, StrOrPromise]]:
        return [self.meets, self.fails]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == self.meets[0]:
            return queryset.filter(self.condition())
        if self.value() == self.fails[0]:
            return queryset.exclude(self.condition())
        return queryset


class OnlineFilter(ConditionFilter):
    title = gettext_lazy("board")
    parameter_name = "online"
    meets = ("yes", gettext_lazy("Online"))
    fails = ("no", gettext_lazy("Offline"))

    def condition(self) -> Q:
        return Q(last_seen__gte=Machine.online_since())


class MaintenanceFilter(ConditionFilter):
    title = gettext_lazy("maintenance")
    parameter_name = "maintenance"
    meets = ("due", gettext_lazy("Overdue"))
    fails = ("ok", gettext_lazy("Up to date"))

    def condition(self) -> Exists:
        due = MaintenancePlan.due_condition(OuterRef("hours"))
        return Exists(MaintenancePlan.objects.filter(due, machine=OuterRef("pk")))


class PlanDueFilter(ConditionFilter):
    title = gettext_lazy("status")
    parameter_name = "due"
    meets = ("yes", gettext_lazy("Overdue"))
    fails = ("no", gettext_lazy("Up to date"))

    def condition(self) -> Q:
        return MaintenancePlan.due_condition(F("machine__hours"))
