websocket_urlpatterns: list = [
    # The live dashboard consumer is registered here (telemetry.consumers).
]
