from django.apps import AppConfig


class FabomaticConfig(AppConfig):
    name = "fabomatic"
    verbose_name = "Fab-O-Matic"
