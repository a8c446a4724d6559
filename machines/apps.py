from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class MachinesConfig(AppConfig):
    name = "machines"
    verbose_name = _("Machines")

    def ready(self) -> None:
        from django.conf import settings

        if settings.FABOMATIC_PROCESS == "bridge":
            return  # the bridge never changes a member (and stays slim)
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save

        from .dashboard.consumers import member_gone, member_saved

        # Open dashboards close when their member loses access (machines/dashboard/consumers.py).
        user_model = get_user_model()
        post_save.connect(member_saved, sender=user_model, dispatch_uid="dashboard-access-saved")
        post_delete.connect(member_gone, sender=user_model, dispatch_uid="dashboard-access-deleted")
