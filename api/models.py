"""API tokens: a name, the SHA-256 of the secret (shown once), the staff member it acts as and its scope."""

from __future__ import annotations

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class ApiToken(models.Model):
    """A bearer token for the REST API (``api/tokens.py``).

    It acts with its owner's portal rights (their role's permissions, the machines they train), never more, and
    only while the owner is an active staff member; a read-only token never writes, whatever its owner may do."""

    class Scope(models.TextChoices):
        READ = "read", _("read-only")
        WRITE = "write", _("read and write")

    name = models.CharField(_("name"), max_length=100, help_text=_("What uses it, e.g. “membership system”."))
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    owner = models.ForeignKey(
        "members.Member",
        on_delete=models.CASCADE,
        related_name="api_tokens",
        verbose_name=_("acts as"),
        editable=False,
    )
    scope = models.CharField(_("scope"), max_length=8, choices=Scope.choices, default=Scope.READ)
    created_at = models.DateTimeField(_("created"), default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name = _("API token")
        verbose_name_plural = _("API tokens")

    def __str__(self) -> str:
        return self.name

    @property
    def may_write(self) -> bool:
        return self.scope == self.Scope.WRITE
