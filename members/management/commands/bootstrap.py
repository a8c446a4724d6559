from django.core.management.base import BaseCommand

from members.setup import ensure_defaults


class Command(BaseCommand):
    help = (
        "Create the default roles, the anonymous member and, when no portal user exists yet, the first "
        "administrator from DEFAULT_ADMIN_EMAIL with a one-time password printed here. Safe to run on every start."
    )

    def handle(self, *args: object, **options: object) -> None:
        admin = ensure_defaults()
        if admin is None:
            self.stdout.write("Defaults present; portal users exist.")
            return
        self.stdout.write(
            self.style.WARNING(
                f"First portal administrator created.\n  e-mail:   {admin.email}\n  password: {admin.password}\n"
                "This password is shown once: log in and change it (or use 'Forgotten your password?')."
            )
        )
