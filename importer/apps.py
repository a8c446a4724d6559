from django.apps import AppConfig


class ImporterConfig(AppConfig):
    """Bringing data from elsewhere into the three apps (``importer.legacy``: the old FabOMatic backend).

    It depends on members, machines and telemetry, and nothing depends on it; the bridge does not load it.
    """

    name = "importer"
