"""First-run set-up: the default roles, the anonymous member and the first portal administrator."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from machines.models import MachineType

from .models import ADMIN_ROLE, ANONYMOUS_ROLE, DEFAULT_ROLE, STAFF_ROLE, Member, Role

DEFAULT_ROLES = [
    # name, authorize_all, maintenance, backend_admin, reserved
    (ADMIN_ROLE, True, True, True, True),
    (STAFF_ROLE, False, True, False, False),
    (DEFAULT_ROLE, False, False, False, False),
    (ANONYMOUS_ROLE, False, False, False, True),
]


@dataclass
class FirstAdmin:
    email: str
    password: str


@transaction.atomic
def ensure_defaults() -> FirstAdmin | None:
    """Idempotent: create what a new installation needs; returns the first admin if one was created."""
    for name, authorize_all, maintenance, backend_admin, reserved in DEFAULT_ROLES:
        Role.objects.get_or_create(
            name=name,
            defaults={
                "authorize_all": authorize_all,
                "maintenance": maintenance,
                "backend_admin": backend_admin,
                "reserved": reserved,
            },
        )
    MachineType.objects.get_or_create(name="Default type")
    Member.objects.anonymous()
    if Member.objects.filter(is_staff=True).exists():
        return None
    password = secrets.token_urlsafe(12)
    Member.objects.create_superuser(
        email=settings.DEFAULT_ADMIN_EMAIL,
        password=password,
        first_name="Admin",
        last_name="",
        role=Role.objects.get(name=ADMIN_ROLE),
    )
    return FirstAdmin(settings.DEFAULT_ADMIN_EMAIL, password)
