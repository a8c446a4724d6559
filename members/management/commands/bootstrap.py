import secrets
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from members.models import Member
from members.setup import ensure_defaults

NEW_PASSWORD_HINT = (
    "Lost the password, or locked out? `.venv/bin/python manage.py bootstrap --new-password` issues a new one."
)


class Command(BaseCommand):
    help = (
        "Create the default roles, the anonymous member and, when no portal user exists yet, the first "
        "administrator from DEFAULT_ADMIN_EMAIL with a one-time password printed here. Safe to run on every start. "
        "With --new-password: a new one-time password for a portal user (default: the first administrator)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--new-password",
            action="store_true",
            help="Give a portal user a new one-time password, printed here, and lift a login lockout.",
        )
        parser.add_argument(
            "--email",
            default="",
            help="With --new-password: the portal user's e-mail (default: DEFAULT_ADMIN_EMAIL, else the only "
            "superuser).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["new_password"]:
            self.new_password(options["email"])
            return
        admin = ensure_defaults()
        if admin is None:
            self.stdout.write("Defaults present; portal users exist.")
            if not Member.objects.filter(is_staff=True, last_login__isnull=False).exists():
                self.stdout.write(f"No portal user has logged in yet. {NEW_PASSWORD_HINT}")
            return
        self.stdout.write(
            self.style.WARNING(
                f"First portal administrator created.\n  e-mail:   {admin.email}\n  password: {admin.password}\n"
                "This password is shown once: log in and change it (or use 'Forgotten your password?').\n"
                + NEW_PASSWORD_HINT
            )
        )

    @transaction.atomic
    def new_password(self, email: str) -> None:
        staff = Member.objects.filter(is_staff=True, is_active=True, deleted_at__isnull=True)
        if email:
            member = staff.filter(email__iexact=email).first()
        else:
            member = staff.filter(email__iexact=settings.DEFAULT_ADMIN_EMAIL).first()
            if member is None and staff.filter(is_superuser=True).count() == 1:
                member = staff.get(is_superuser=True)
        if member is None:
            who = email or settings.DEFAULT_ADMIN_EMAIL
            raise CommandError(f"No active portal user {who}: give one with --email (a portal user's e-mail).")
        password = secrets.token_urlsafe(12)
        member.set_password(password)
        member.save(update_fields=["password"])
        from axes.utils import reset  # settings must be loaded first

        reset(username=member.email)
        self.stdout.write(
            self.style.WARNING(
                f"New one-time password for {member.email}.\n  e-mail:   {member.email}\n  password: {password}\n"
                "Log in and change it. Any login lockout of this account is lifted."
            )
        )
