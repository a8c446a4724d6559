"""The URLconf of requests under /api/ (api/routing.py): the API, then every URL of the portal."""

from django.urls import include, path

from fabomatic.urls import urlpatterns as portal_urlpatterns

urlpatterns = [path("api/v1/", include("api.urls")), *portal_urlpatterns]
