"""The list filters of the API: the portal's (machine, member, date range, open, flagged, expired, due), read from
the query string, each documented in the schema. A malformed value is a 400, never ignored."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import F, Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request

from machines import safety
from machines.filters import few, flagged_uses, open_uses
from machines.models import MaintenancePlan, Use

MAX_ID = 2**63 - 1


def parse_id(value: str) -> int:
    """An integer in the 64-bit range (one that no row has just finds nothing)."""
    number = int(value)
    if not -MAX_ID - 1 <= number <= MAX_ID or value.strip() != value:
        raise ValueError
    return number


def parse_bool(value: str) -> bool:
    if value not in ("true", "false"):
        raise ValueError
    return value == "true"


def parse_moment(value: str) -> datetime:
    moment = parse_datetime(value)
    if moment is None or moment.year < 2 or moment.year > 9998:
        raise ValueError
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment)


@dataclass(frozen=True)
class Filter:
    name: str
    kind: Any  # OpenApiTypes
    parse: Callable[[str], Any]
    apply: Callable[[Any], Q]
    description: str

    def parameter(self) -> OpenApiParameter:
        return OpenApiParameter(self.name, self.kind, OpenApiParameter.QUERY, description=self.description)


def by_id(name: str, field: str, description: str) -> Filter:
    return Filter(name, OpenApiTypes.INT64, parse_id, lambda value: Q(**{field: value}), description)


def yes_no(name: str, condition: Callable[[], Q], description: str) -> Filter:
    return Filter(name, OpenApiTypes.BOOL, parse_bool, lambda yes: condition() if yes else ~condition(), description)


def apply_filters(request: Request, queryset: QuerySet, filters: tuple[Filter, ...]) -> QuerySet:
    errors = {}
    for item in filters:
        raw = request.query_params.get(item.name)
        if raw is None:
            continue
        try:
            value = item.parse(raw)
        except (ValueError, OverflowError):
            errors[item.name] = f"Invalid value: {raw[:40]!r}."
            continue
        queryset = queryset.filter(item.apply(value))
    if errors:
        raise ValidationError(errors)
    return queryset


MACHINE = by_id("machine", "machine_id", "Only this machine (its board id).")
MEMBER = by_id("member", "member_id", "Only this member.")
USES = (
    MACHINE,
    MEMBER,
    Filter(
        "started_after",
        OpenApiTypes.DATETIME,
        parse_moment,
        lambda moment: Q(started_at__gte=moment),
        "Uses that started at or after this moment (ISO 8601).",
    ),
    Filter(
        "started_before",
        OpenApiTypes.DATETIME,
        parse_moment,
        lambda moment: Q(started_at__lt=moment),
        "Uses that started before this moment (ISO 8601).",
    ),
    Filter(
        "open",
        OpenApiTypes.BOOL,
        parse_bool,
        lambda yes: few(open_uses) if yes else Q(ended_at__isnull=False),
        "true: in progress; false: ended.",
    ),
    Filter(
        "flagged",
        OpenApiTypes.BOOL,
        parse_bool,
        lambda yes: few(flagged_uses) if yes else Q(flag=Use.Flag.NONE),
        "true: implausible durations waiting for review; false: the others.",
    ),
)
AUTHORIZATIONS = (
    MACHINE,
    MEMBER,
    yes_no("expired", lambda: ~safety.valid_condition(timezone.now()), "true: lapsed trainings; false: valid ones."),
)
CARDS = (MEMBER,)
PLANS = (MACHINE, yes_no("due", lambda: MaintenancePlan.due_condition(F("machine__hours")), "true: overdue items."))
INTERVENTIONS = (MACHINE, by_id("plan", "plan_id", "Only this maintenance item."))
UNKNOWN_CARDS = (MACHINE,)
