"""Portal permissions from the member's role, so that nobody has to tick Django permissions by hand.

* ``backend_admin`` roles: every permission.
* ``maintenance`` roles: view everything; add and change interventions and maintenance plans; file and close fault
  reports and confirm checks after use (what their card already does at the machine with the 10-second hold);
  nothing on members.
* any other staff member: view only.
* trainers of a machine or a machine type (any role): also add and delete authorizations; which machines they may
  grant, renew or remove is decided per machine by ``machines.safety.may_train``.
* superusers keep everything (Django's own rule, before any backend is asked).

Permissions ticked by hand on a member or a group still work (``ModelBackend`` stays in the list); this backend
only adds. It never authenticates anyone.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import BaseBackend
from django.contrib.auth.models import Permission

# The apps whose data the portal shows; "view everything" means these.
PORTAL_APPS = ("members", "machines", "telemetry")
MAINTENANCE_EDITS = {
    "machines.add_intervention",
    "machines.change_intervention",
    "machines.add_maintenanceplan",
    "machines.change_maintenanceplan",
    # The portal twin of the 10-second hold, which these roles (the board's level 2) already have at the machine.
    "machines.add_faultreport",
    "machines.change_faultreport",
    "machines.change_machinecheck",
}
TRAINER_EDITS = {"machines.add_authorization", "machines.delete_authorization"}
_CACHE = "_fabomatic_role_perm_cache"


def _perm_names(qs: Any) -> set[str]:
    return {f"{app}.{codename}" for app, codename in qs.values_list("content_type__app_label", "codename")}


def role_permissions(user: Any) -> set[str]:
    """The permissions a staff member's role grants (empty for anyone else)."""
    if not (user.is_active and user.is_staff) or getattr(user, "deleted_at", None) is not None:
        return set()
    role = getattr(user, "role", None)
    if role is None:
        return set()
    if role.backend_admin:
        return _perm_names(Permission.objects.all())
    views = _perm_names(
        Permission.objects.filter(content_type__app_label__in=PORTAL_APPS, codename__startswith="view_")
    )
    perms = views | MAINTENANCE_EDITS if role.maintenance else views
    if user.trains_machines.exists() or user.trains_types.exists():
        perms |= TRAINER_EDITS
    return perms


class RoleBackend(BaseBackend):
    def authenticate(self, request: Any, **credentials: Any) -> None:
        return None

    def get_all_permissions(self, user_obj: Any, obj: Any = None) -> set[str]:
        if obj is not None or user_obj.is_anonymous:
            return set()
        if not hasattr(user_obj, _CACHE):
            setattr(user_obj, _CACHE, role_permissions(user_obj))
        return getattr(user_obj, _CACHE)

    def has_perm(self, user_obj: Any, perm: str, obj: Any = None) -> bool:
        return perm in self.get_all_permissions(user_obj, obj)

    def has_module_perms(self, user_obj: Any, app_label: str) -> bool:
        return any(p.startswith(f"{app_label}.") for p in self.get_all_permissions(user_obj))
