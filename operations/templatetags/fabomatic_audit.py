"""The audit trail's and the admin History's messages in templates, in the reader's language (``operations.audit``)."""

from __future__ import annotations

from typing import Any

from django import template

from operations import audit

register = template.Library()


@register.filter
def audit_message(entry: Any) -> str:
    return audit.message_of(entry)


@register.filter
def history_message(action: Any) -> str:
    return audit.history_text(action)
