"""What the API shows of each object, and what its writes accept."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from machines.dashboard.tiles import STATES
from machines.models import Authorization, Intervention, Machine, MaintenancePlan, Use
from machines.training_forms import RuleFields
from members.models import Card, Member, UnknownCard


class MachineSerializer(serializers.Serializer):
    """A machine with its live state: the dashboard's tile (``machines.dashboard.tiles``) and its meter."""

    id = serializers.IntegerField(help_text="The board id (topic machine/<id>).")
    name = serializers.CharField()
    type = serializers.CharField(help_text="The machine type's name.")
    state = serializers.ChoiceField(choices=STATES, help_text="The dashboard tile's state.")
    user = serializers.CharField(allow_null=True, help_text="First name of whoever is using it, or null.")
    since = serializers.DateTimeField(allow_null=True, help_text="Start of the open use, or null.")
    hours = serializers.FloatField(help_text="Hour meter.")
    blocked = serializers.BooleanField()
    maintenance_due = serializers.BooleanField()
    maintenance = serializers.CharField(help_text="The first maintenance item due (LCD text), or empty.")
    online = serializers.BooleanField(help_text="The board was heard from within ONLINE_SECONDS.")
    last_seen = serializers.DateTimeField(allow_null=True)


class UseSerializer(serializers.ModelSerializer):
    open = serializers.SerializerMethodField()

    class Meta:
        model = Use
        fields = [
            "id",
            "machine",
            "member",
            "started_at",
            "ended_at",
            "open",
            "duration",
            "replay",
            "flag",
            "reported_duration",
            "plausible_max",
        ]

    def get_open(self, use: Use) -> bool:
        return use.ended_at is None


class MemberSerializer(serializers.ModelSerializer):
    role = serializers.CharField(source="role.name", read_only=True)

    class Meta:
        model = Member
        fields = ["id", "first_name", "last_name", "email", "role", "disabled", "is_staff", "is_active", "date_joined"]


class CardSerializer(serializers.ModelSerializer):
    class Meta:
        model = Card
        fields = ["id", "uid", "member", "active", "created_at"]


class CardRegistrationSerializer(serializers.Serializer):
    """A new card for a member (``members.services.register_card``: validated as the portal validates it)."""

    member = serializers.PrimaryKeyRelatedField(queryset=Member.objects.filter(deleted_at__isnull=True))
    uid = serializers.CharField(max_length=20, help_text="8 or 14 hexadecimal digits; separators are ignored.")
    active = serializers.BooleanField(default=True)


class AuthorizationSerializer(serializers.ModelSerializer):
    expired = serializers.SerializerMethodField()

    class Meta:
        model = Authorization
        fields = [
            "id",
            "member",
            "machine",
            "granted_at",
            "trained_by",
            "expiry",
            "expiry_days",
            "expires_at",
            "expired",
            "last_used_at",
        ]
        read_only_fields = [f for f in fields if f not in ("member", "machine")]

    @extend_schema_field(serializers.BooleanField(help_text="The training has lapsed: the board refuses the card."))
    def get_expired(self, authorization: Authorization) -> bool:
        return authorization.is_expired(timezone.now())


class GrantSerializer(serializers.Serializer):
    """Train a member on a machine now (a renewal when already trained), with the machine type's expiry rule unless
    ``rule`` gives another: checked by the portal's own form (``machines.training_forms.RuleFields``)."""

    member = serializers.PrimaryKeyRelatedField(queryset=Member.objects.filter(deleted_at__isnull=True))
    machine = serializers.PrimaryKeyRelatedField(queryset=Machine.objects.select_related("type"))
    rule = serializers.ChoiceField(
        choices=Authorization.Expiry.choices, required=False, help_text="Omitted: the machine type's rule."
    )
    days = serializers.IntegerField(
        min_value=1, max_value=36500, required=False, help_text="For after_days and idle_days."
    )
    on_date = serializers.DateField(required=False, help_text="For on_date: the last day it holds (not past).")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        form = RuleFields(data={key: attrs.get(key) or "" for key in ("rule", "days", "on_date")})
        if not form.is_valid():
            raise serializers.ValidationError(
                {field: [str(e) for e in errors] for field, errors in form.errors.items()}
            )
        attrs["training_rule"] = form.training_rule()
        return attrs


class MaintenancePlanSerializer(serializers.ModelSerializer):
    hours_since = serializers.SerializerMethodField()
    due = serializers.SerializerMethodField()

    class Meta:
        model = MaintenancePlan
        fields = [
            "id",
            "machine",
            "description",
            "lcd_message",
            "instructions_url",
            "hours_between",
            "done_at_hours",
            "done_at",
            "hours_since",
            "due",
        ]

    def get_hours_since(self, plan: MaintenancePlan) -> float:
        return plan.hours_since()

    def get_due(self, plan: MaintenancePlan) -> bool:
        return plan.is_due()


class InterventionSerializer(serializers.ModelSerializer):
    class Meta:
        model = Intervention
        fields = ["id", "plan", "machine", "member", "performed_at", "machine_hours", "replay", "note"]
        read_only_fields = ["id", "machine", "member", "machine_hours", "replay"]
        extra_kwargs = {"performed_at": {"required": False}, "note": {"required": False}}

    def validate_performed_at(self, value: Any) -> Any:
        if value > timezone.now():
            raise serializers.ValidationError("An intervention cannot be in the future.")
        return value


class UnknownCardSerializer(serializers.ModelSerializer):
    class Meta:
        model = UnknownCard
        fields = ["id", "uid", "machine", "first_seen", "seen_at", "count"]
