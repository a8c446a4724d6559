"""The audit trail's messages in templates, in the reader's language (see ``operations.audit.message_of``)."""

from __future__ import annotations

from typing import Any

from django import template

from operations import audit

register = template.Library()


@register.filter
def audit_message(entry: Any) -> str:
    return audit.message_of(entry)
