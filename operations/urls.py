"""The System page (operations/system.py) under ``admin/system/``: staff only, through the admin's login."""

from django.contrib import admin
from django.urls import path

from . import firmware, system, tools

urlpatterns = [
    path("", admin.site.admin_view(system.system_view), name="fabomatic_system"),
    path("backup/", admin.site.admin_view(system.backup_view), name="fabomatic_system_backup"),
    path("restore/", admin.site.admin_view(tools.restore_view), name="fabomatic_system_restore"),
    path("logs/", admin.site.admin_view(tools.logs_view), name="fabomatic_system_logs"),
    path("firmware/", admin.site.admin_view(firmware.firmware_view), name="fabomatic_firmware"),
    path("firmware/rollout/", admin.site.admin_view(firmware.start_view), name="fabomatic_firmware_start"),
    path(
        "firmware/rollout/<int:rollout_id>/cancel/",
        admin.site.admin_view(firmware.cancel_view),
        name="fabomatic_firmware_cancel",
    ),
    path("firmware/status/", admin.site.admin_view(firmware.status_view), name="fabomatic_firmware_status"),
    path(
        "credentials/<int:machine_id>/",
        admin.site.admin_view(system.credentials_view),
        name="fabomatic_board_credentials",
    ),
]
