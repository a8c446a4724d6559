"""factory_boy factories for the domain model."""

from __future__ import annotations

import factory
from django.utils import timezone

from machines.models import Authorization, Machine, MachineType, MaintenancePlan, Use
from members.models import Card, Member, Role


class RoleFactory(factory.django.DjangoModelFactory[Role]):
    class Meta:
        model = Role
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"Role {n}")


class MemberFactory(factory.django.DjangoModelFactory[Member]):
    class Meta:
        model = Member

    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    email = factory.Sequence(lambda n: f"member{n}@example.org")
    role = factory.SubFactory(RoleFactory, name="USER")
    password = factory.django.Password(None)


class CardFactory(factory.django.DjangoModelFactory[Card]):
    class Meta:
        model = Card

    uid = factory.Sequence(lambda n: f"{0x10000000 + n:08x}")
    member = factory.SubFactory(MemberFactory)


class MachineTypeFactory(factory.django.DjangoModelFactory[MachineType]):
    class Meta:
        model = MachineType
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"Type {n}")


class MachineFactory(factory.django.DjangoModelFactory[Machine]):
    class Meta:
        model = Machine

    id = factory.Sequence(lambda n: 100 + n)
    name = factory.Sequence(lambda n: f"MACHINE {n}")
    type = factory.SubFactory(MachineTypeFactory)


class AuthorizationFactory(factory.django.DjangoModelFactory[Authorization]):
    class Meta:
        model = Authorization

    member = factory.SubFactory(MemberFactory)
    machine = factory.SubFactory(MachineFactory)


class MaintenancePlanFactory(factory.django.DjangoModelFactory[MaintenancePlan]):
    class Meta:
        model = MaintenancePlan

    machine = factory.SubFactory(MachineFactory)
    hours_between = 10
    description = "Clean the lens"
    lcd_message = "pulire lente"


class UseFactory(factory.django.DjangoModelFactory[Use]):
    class Meta:
        model = Use

    member = factory.SubFactory(MemberFactory)
    machine = factory.SubFactory(MachineFactory)
    started_at = factory.LazyFunction(timezone.now)
    last_seen = factory.LazyAttribute(lambda o: o.started_at)
