"""The sign-off page's addresses (under /admin/sign-off/, behind the admin's login: staff only)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

from . import training_views

urlpatterns = [
    path("", admin.site.admin_view(training_views.sign_off_view), name="machines_sign_off"),
    path("<int:machine_id>/arm/", admin.site.admin_view(training_views.arm_view), name="machines_sign_off_arm"),
    path(
        "<int:machine_id>/disarm/", admin.site.admin_view(training_views.disarm_view), name="machines_sign_off_disarm"
    ),
    path(
        "<int:machine_id>/status/", admin.site.admin_view(training_views.status_view), name="machines_sign_off_status"
    ),
]
