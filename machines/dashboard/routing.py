"""The websocket routes, mounted by fabomatic/asgi.py: the dashboard and the kiosk screens (kiosk_consumer)."""

from django.urls import path

from machines.kiosk_consumer import KioskConsumer

from .consumers import DashboardConsumer

websocket_urlpatterns = [
    path("ws/dashboard/", DashboardConsumer.as_asgi()),
    path("ws/kiosk/<str:secret>/", KioskConsumer.as_asgi()),
]
