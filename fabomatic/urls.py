from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from fabomatic.metrics import metrics_view
from integrations.spaceapi import spaceapi_view
from machines import faults
from machines.kiosk_views import kiosk_page
from members import sso
from members.password_reset import RateLimitedPasswordResetView
from members.views import member_report_view

urlpatterns = [
    path("i18n/", include("django.conf.urls.i18n")),
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    # Browsers ask for /favicon.ico whatever the page links: without this, every tab adds a 404 to the log.
    path("favicon.ico", RedirectView.as_view(url=static("fabomatic/favicon.svg"), permanent=True)),
    # Password reset through Django's own flow (linked from the login page).
    path(
        "admin/password_reset/",
        # Staff without a password yet set their first one this way; rate-limited per e-mail and per IP.
        RateLimitedPasswordResetView.as_view(),
        name="admin_password_reset",
    ),
    path("admin/password_reset/done/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path("reset/<uidb64>/<token>/", auth_views.PasswordResetConfirmView.as_view(), name="password_reset_confirm"),
    path("reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    # The System page (operations/system.py): staff only, through the admin's login.
    path("admin/system/", include("operations.urls")),
    # GDPR right of access: one page with everything held about a member.
    path(
        "admin/members/member/<int:member_id>/report/",
        admin.site.admin_view(member_report_view),
        name="fabomatic_member_report",
    ),
    # Sign-off at the machine (a trainer's phone): machines/training_views.py, trainers only.
    path("admin/sign-off/", include("machines.training_urls")),
    # Single sign-on (members/sso.py; 404 while OIDC_ENABLED is off). The logout ends the provider's session too.
    path("oidc/authenticate/", sso.start_view, name="oidc_authenticate"),
    path("oidc/callback/", sso.callback_view, name="oidc_callback"),
    path("admin/logout/", sso.logout_view),
    path("admin/", admin.site.urls),
    # Prometheus: to this machine's own clients or a bearer token only (README "Metrics, Grafana and alerts").
    # The REST API: bearer tokens made in the portal (README "REST API"), its schema and docs.
    path("metrics", metrics_view, name="fabomatic_metrics"),
    # The lab's kiosk screens: no login, a secret address (machines/kiosk.py).
    path("kiosk/<str:secret>/", kiosk_page, name="kiosk"),
    # The fault report page of a machine's QR sticker: no login, a secret code per machine (machines/faults.py).
    path("report/<str:token>/", faults.report_view, name="fault_report"),
    path("report/<str:token>/thanks/", faults.thanks_view, name="fault_report_thanks"),
    # SpaceAPI v15, when SPACEAPI_ENABLED: no login, any origin (integrations/spaceapi.py).
    path("spaceapi.json", spaceapi_view, name="spaceapi"),
]
