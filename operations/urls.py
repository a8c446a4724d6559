"""The System page (operations/system.py) under ``admin/system/``: staff only, through the admin's login."""

from django.contrib import admin
from django.urls import path

from . import system, tools

urlpatterns = [
    path("", admin.site.admin_view(system.system_view), name="fabomatic_system"),
    path("backup/", admin.site.admin_view(system.backup_view), name="fabomatic_system_backup"),
    path("restore/", admin.site.admin_view(tools.restore_view), name="fabomatic_system_restore"),
    path("logs/", admin.site.admin_view(tools.logs_view), name="fabomatic_system_logs"),
    path(
        "credentials/<int:machine_id>/",
        admin.site.admin_view(system.credentials_view),
        name="fabomatic_board_credentials",
    ),
]
