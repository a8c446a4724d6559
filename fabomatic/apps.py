from django.apps import AppConfig


class FabomaticConfig(AppConfig):
    name = "fabomatic"
    verbose_name = "Fab-O-Matic"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the deploy checks
