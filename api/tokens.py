"""API tokens: made (the secret shown once, only its SHA-256 kept), looked up, revoked.

A secret is ``fab_`` + ``secrets.token_urlsafe(32)`` (256 bits): the prefix lets secret scanners and people tell
it from other credentials. Anything not of that form is not looked up at all.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta

from django.utils import timezone

from members.models import Member

from .models import ApiToken

PREFIX = "fab_"
SECRET_FORMAT = re.compile(r"fab_[A-Za-z0-9_-]{43}")
USED_EVERY = timedelta(seconds=60)  # last_used_at is written at most this often


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret_body() -> str:
    return secrets.token_urlsafe(32)


def create_token(name: str, *, owner: Member, scope: str = ApiToken.Scope.READ) -> tuple[ApiToken, str]:
    """A new token acting as ``owner``, and its secret (to show once: only the hash is kept)."""
    secret = PREFIX + new_secret_body()
    token = ApiToken.objects.create(name=name.strip(), token_hash=hash_secret(secret), owner=owner, scope=scope)
    return token, secret


def find(secret: str, now: datetime | None = None) -> ApiToken | None:
    """The live token with this secret, its owner still an active staff member; or None. Stamps its last use."""
    if not SECRET_FORMAT.fullmatch(secret):
        return None
    token = (
        ApiToken.objects.select_related("owner__role")
        .filter(token_hash=hash_secret(secret), revoked_at__isnull=True)
        .first()
    )
    if token is None:
        return None
    owner = token.owner
    if not (owner.is_active and owner.is_staff and owner.deleted_at is None):
        return None
    now = now or timezone.now()
    if token.last_used_at is None or token.last_used_at < now - USED_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def revoke(token: ApiToken, now: datetime | None = None) -> bool:
    """Revoke for good; False when it already was."""
    now = now or timezone.now()
    if not ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now):
        return False
    token.revoked_at = now
    return True
