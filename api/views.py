"""The REST API's endpoints (``/api/v1/``): thin views over the portal's queries and services.

Every write goes through the service the portal uses (``machines.safety.grant``/``renew`` and ``may_train`` for
trainings, ``members.services.revoke_authorizations`` and ``register_card``,
``machines.services.record_manual_intervention``) and is in the audit trail twice: the model's own entry (with the
token's owner as actor) and a message naming the token.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import Model, QuerySet
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy, gettext_noop
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from machines import safety, services
from machines.dashboard.tiles import tiles
from machines.models import Authorization, Intervention, Machine, MaintenancePlan, Use
from members import services as member_services
from members.models import Card, Member, UnknownCard
from operations import audit

from . import filters, pagination, serializers
from .auth import PortalRights, acting, token_of


def via(request: Request) -> str | Promise:
    """How a write reached us, for the audit trail: the token's name and id, or the portal session (translated)."""
    token = token_of(request)
    return f"“{token.name}” (#{token.pk})" if token is not None else gettext_lazy("portal session")


@contextmanager
def audited_as(request: Request) -> Iterator[None]:
    """The model entries written inside name the acting member (the middleware ran before the token was read)."""
    if not audit.enabled():
        yield
        return
    from auditlog.context import set_actor

    with set_actor(acting(request), remote_addr=request.META.get("REMOTE_ADDR")):
        yield


def record(request: Request, instance: Model, message: str, **params: Any) -> None:
    audit.record(
        instance, message=message, params={**params, "token": via(request)}, actor=acting(request), request=request
    )


@csrf_exempt  # it changes nothing: a POST to an unknown address is a 404 like any other
def not_found(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"detail": "Not found."}, status=404)


class ReadView(viewsets.ReadOnlyModelViewSet):
    """A list (keyset-paginated, filtered) and a detail, for staff whose role may view the model."""

    permission_classes = [PortalRights]
    pagination_class = pagination.KeysetPagination
    list_filters: tuple[filters.Filter, ...] = ()
    required_perms: dict[str, str] = {}

    def filter_queryset(self, queryset: QuerySet) -> QuerySet:
        if self.action == "list":
            return filters.apply_filters(self.request, queryset, self.list_filters)
        return queryset


def listing(filters_: tuple[filters.Filter, ...]) -> Any:
    return extend_schema(parameters=[item.parameter() for item in filters_])


@extend_schema(responses=serializers.MachineSerializer)
class MachineViewSet(viewsets.ViewSet):
    """Every machine with its live state (the dashboard's tiles: five queries whatever the history's length)."""

    permission_classes = [PortalRights]
    required_perms = {"GET": "machines.view_machine"}
    serializer_class = serializers.MachineSerializer

    def rows(self, ids: list[int] | None) -> list[dict[str, Any]]:
        machines = Machine.objects.filter(pk__in=ids) if ids is not None else Machine.objects.all()
        meters = {row["id"]: row for row in machines.values("id", "type__name", "hours", "blocked", "last_seen")}
        since = Machine.online_since()
        rows = []
        for tile in tiles(ids):
            machine = meters.get(tile["id"])
            if machine is None:  # added between the two queries
                continue
            last_seen = machine["last_seen"]
            rows.append(
                {
                    **tile,
                    "type": machine["type__name"],
                    "hours": machine["hours"],
                    "blocked": machine["blocked"],
                    "maintenance_due": bool(tile["maintenance"]),
                    "online": last_seen is not None and last_seen > since,
                }
            )
        return rows

    @extend_schema(responses=serializers.MachineSerializer(many=True))
    def list(self, request: Request) -> Response:
        return Response(serializers.MachineSerializer(self.rows(None), many=True).data)

    @extend_schema(parameters=[OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH)])
    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        if pk is None or not pk.isdigit() or int(pk) > filters.MAX_ID:
            raise NotFound
        found = self.rows([int(pk)])
        if not found:
            raise NotFound
        return Response(serializers.MachineSerializer(found[0]).data)


@extend_schema_view(list=listing(filters.USES))
class UseViewSet(ReadView):
    """The uses, newest first (the ``use_started`` index), with the portal's filters."""

    queryset = Use.objects.all()
    serializer_class = serializers.UseSerializer
    pagination_class = pagination.RecentFirstPagination
    list_filters = filters.USES
    required_perms = {"GET": "machines.view_use"}


@extend_schema_view(list=listing(()))
class MemberViewSet(ReadView):
    """Members (not erased ones): staff scope, as the portal's member list."""

    queryset = Member.objects.filter(deleted_at__isnull=True).select_related("role")
    serializer_class = serializers.MemberSerializer
    required_perms = {"GET": "members.view_member"}


@extend_schema_view(list=listing(filters.CARDS))
class CardViewSet(mixins.CreateModelMixin, ReadView):
    """RFID cards; registering one needs the portal's right to add cards (portal administrators)."""

    queryset = Card.objects.all()
    serializer_class = serializers.CardSerializer
    list_filters = filters.CARDS
    required_perms = {"GET": "members.view_card", "POST": "members.add_card"}

    @extend_schema(request=serializers.CardRegistrationSerializer, responses={201: serializers.CardSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Register a card for a member (its unknown-card rows are cleared); a UID already registered is a 400."""
        given = serializers.CardRegistrationSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        try:
            with audited_as(request), transaction.atomic():
                card = member_services.register_card(member=data["member"], uid=data["uid"], active=data["active"])
                record(request, card, gettext_noop("Card registered through the API (%(token)s)."))
        except DjangoValidationError as error:
            raise ValidationError(error.message_dict if hasattr(error, "error_dict") else error.messages) from error
        return Response(serializers.CardSerializer(card).data, status=status.HTTP_201_CREATED)


@extend_schema_view(list=listing(filters.PLANS))
class MaintenancePlanViewSet(ReadView):
    queryset = MaintenancePlan.objects.select_related("machine")
    serializer_class = serializers.MaintenancePlanSerializer
    list_filters = filters.PLANS
    required_perms = {"GET": "machines.view_maintenanceplan"}


@extend_schema_view(list=listing(filters.UNKNOWN_CARDS))
class UnknownCardViewSet(ReadView):
    """Cards swiped on a board that matched no member (one row per card and machine)."""

    queryset = UnknownCard.objects.all()
    serializer_class = serializers.UnknownCardSerializer
    pagination_class = pagination.SeenPagination
    list_filters = filters.UNKNOWN_CARDS
    required_perms = {"GET": "members.view_unknowncard"}


@extend_schema_view(list=listing(filters.INTERVENTIONS))
class InterventionViewSet(mixins.CreateModelMixin, ReadView):
    """Maintenance done; recording one (by the token's owner, now or back-dated) resets the item's counter as the
    portal does (``machines.services.record_manual_intervention``)."""

    queryset = Intervention.objects.all()
    serializer_class = serializers.InterventionSerializer
    pagination_class = pagination.PerformedPagination
    list_filters = filters.INTERVENTIONS
    required_perms = {"GET": "machines.view_intervention", "POST": "machines.add_intervention"}

    def perform_create(self, serializer: serializers.InterventionSerializer) -> None:
        data = serializer.validated_data
        with audited_as(self.request), transaction.atomic():
            intervention = services.record_manual_intervention(
                plan=data["plan"],
                member=acting(self.request),
                when=data.get("performed_at") or timezone.now(),
                note=data.get("note", ""),
            )
            record(self.request, intervention, gettext_noop("Intervention recorded through the API (%(token)s)."))
        serializer.instance = intervention


@extend_schema_view(list=listing(filters.AUTHORIZATIONS))
class AuthorizationViewSet(mixins.CreateModelMixin, mixins.DestroyModelMixin, ReadView):
    """Trainings: read; grant, renew and revoke with the portal's rules (only on the machines the token's owner
    trains, ``machines.safety.may_train``; portal administrators train on all)."""

    queryset = Authorization.objects.all()
    serializer_class = serializers.AuthorizationSerializer
    list_filters = filters.AUTHORIZATIONS
    required_perms = {
        "GET": "machines.view_authorization",
        "POST": "machines.add_authorization",  # grant and renew, as in the portal
        "DELETE": "machines.delete_authorization",
    }

    @staticmethod
    def object_rule(member: Member, authorization: Authorization) -> bool:
        return safety.may_train(member, authorization.machine)

    def get_serializer_class(self) -> Any:
        return serializers.GrantSerializer if self.action == "create" else serializers.AuthorizationSerializer

    @extend_schema(request=serializers.GrantSerializer, responses={201: serializers.AuthorizationSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Train the member on the machine now, by the token's owner, with the machine type's expiry rule or the
        one given (a renewal when they were trained already)."""
        grant = serializers.GrantSerializer(data=request.data)
        grant.is_valid(raise_exception=True)
        member, machine = grant.validated_data["member"], grant.validated_data["machine"]
        trainer = acting(request)
        if not safety.may_train(trainer, machine):
            raise PermissionDenied("The token's owner is not a trainer of this machine.")
        with audited_as(request), transaction.atomic():
            authorization = grant.validated_data["training_rule"].grant(member, machine, by=trainer)
            message = gettext_noop("Training granted by %(trainer)s through the API (%(token)s).")
            record(request, authorization, message, trainer=str(trainer))
        body = serializers.AuthorizationSerializer(authorization).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=serializers.AuthorizationSerializer)
    @action(detail=True, methods=["post"])
    def renew(self, request: Request, pk: str | None = None) -> Response:
        """Trained again now, by the token's owner: the authorization keeps its rule (``machines.safety.renew``)."""
        authorization = self.get_object()
        trainer = acting(request)
        with audited_as(request), transaction.atomic():
            safety.renew(Authorization.objects.filter(pk=authorization.pk), by=trainer)
            authorization.refresh_from_db()
            message = gettext_noop("Training renewed by %(trainer)s through the API (%(token)s).")
            record(request, authorization, message, trainer=str(trainer))
        return Response(serializers.AuthorizationSerializer(authorization).data)

    def perform_destroy(self, instance: Authorization) -> None:
        """Revoked (``members.services.revoke_authorizations``): the board refuses the card from its next swipe."""
        with audited_as(self.request), transaction.atomic():
            message = gettext_noop("Authorization revoked through the API (%(token)s).")
            record(self.request, instance, message)
            member_services.revoke_authorizations(members=[instance.member], machines=[instance.machine])
