"""The dashboard's websocket route (mounted by fabomatic/asgi.py)."""

from django.urls import path

from .consumers import DashboardConsumer

websocket_urlpatterns = [
    path("ws/dashboard/", DashboardConsumer.as_asgi()),
]
