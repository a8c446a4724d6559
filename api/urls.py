"""``/api/v1/``: the endpoints, the OpenAPI 3 schema and its Swagger UI (served from this host, CSP-clean)."""

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from . import schema, views
from .routing import API_URLCONF

assert schema  # imported for its schema extensions (the authentication's), registered on import

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("machines", views.MachineViewSet, basename="machine")
router.register("uses", views.UseViewSet, basename="use")
router.register("members", views.MemberViewSet, basename="member")
router.register("cards", views.CardViewSet, basename="card")
router.register("authorizations", views.AuthorizationViewSet, basename="authorization")
router.register("maintenance-plans", views.MaintenancePlanViewSet, basename="maintenanceplan")
router.register("interventions", views.InterventionViewSet, basename="intervention")
router.register("unknown-cards", views.UnknownCardViewSet, basename="unknowncard")

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(urlconf=API_URLCONF), name="api-schema"),
    path(
        "docs/",
        SpectacularSwaggerSplitView.as_view(url_name="api-schema", template_name="api/swagger_ui.html"),
        name="api-docs",
    ),
    path("", include(router.urls)),
    # Anything else under /api/v1/ is a JSON 404, as the schema documents (not the portal's HTML page).
    re_path(r"^.*$", views.not_found),
]
