from django.apps import AppConfig


class OperationsConfig(AppConfig):
    """Running the installation: the System page (versions, database, bridges, boards, logs, board secrets) and
    database backups (``manage.py backup``, the System page's download). No models; the bridge does not load it."""

    name = "operations"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from . import audit

        if audit.enabled():  # logins and failed logins go to the audit trail
            user_logged_in.connect(audit.on_login, dispatch_uid="audit-login")
            user_login_failed.connect(audit.on_login_failed, dispatch_uid="audit-login-failed")
