from django.apps import AppConfig


class OperationsConfig(AppConfig):
    """Running the installation: the System page (versions, database, bridges, boards, logs, board secrets) and
    database backups (``manage.py backup``, the System page's download). No models; the bridge does not load it."""

    name = "operations"
