"""Run the test OpenID provider: ``python -m tests.oidc_op.serve PORT REDIRECT_URI...``.

Creates its database (OIDC_OP_DATABASE), its RSA signing key, one confidential client (CLIENT_ID, CLIENT_SECRET,
the authorization-code flow, no consent screen) allowed to redirect to the given URIs, and USERS; then serves on
127.0.0.1:PORT until terminated.
"""

from __future__ import annotations

import os
import sys

CLIENT_ID = "fabomatic-tests"
CLIENT_SECRET = "fabomatic-tests-client-secret"
PASSWORD = "op-password-1"
# username: (e-mail, first name, last name). "unverified…" users have email_verified false (settings.userinfo).
USERS = {
    "staff": ("Staff.Member@Lab.test", "Stella", "Staff"),
    "nobody": ("nobody@lab.test", "Nora", "Nobody"),
    "newcomer": ("newcomer@lab.test", "Nico", "Newcomer"),
    "disabled": ("disabled@lab.test", "Dina", "Disabled"),
    "cardholder": ("cardholder@lab.test", "Carl", "Cardholder"),
    "unverified": ("unverified@lab.test", "Ugo", "Unverified"),
}


def setup(redirect_uris: list[str], post_logout_uris: list[str]) -> None:
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from oidc_provider.models import Client, ResponseType

    call_command("migrate", verbosity=0)
    call_command("creatersakey")
    client = Client.objects.create(
        name="Fab-O-Matic",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        client_type="confidential",
        jwt_alg="RS256",
        require_consent=False,
        _scope="openid email profile",
    )
    client.redirect_uris = redirect_uris
    client.post_logout_redirect_uris = post_logout_uris
    client.save()
    client.response_types.add(ResponseType.objects.get(value="code"))
    for username, (email, first, last) in USERS.items():
        User.objects.create_user(username, email=email, password=PASSWORD, first_name=first, last_name=last)


def main() -> None:
    port = sys.argv[1]
    uris = sys.argv[2:]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.oidc_op.settings")
    import django
    from django.core.management import call_command

    django.setup()
    setup([u for u in uris if u.endswith("/oidc/callback/")], [u for u in uris if not u.endswith("/oidc/callback/")])
    print("ready", flush=True)
    call_command("runserver", f"127.0.0.1:{port}", "--noreload", "--skip-checks")


if __name__ == "__main__":
    main()
