"""The mail backend of a production install with no EMAIL_URL: sends nothing, and logs no body.

Django's console backend writes every message whole to stdout, i.e. into the journal: password-reset links (valid
tokens) ended up readable there. This one logs a warning with the subject and the number of recipients only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend

logger = logging.getLogger(__name__)


class UnsentMailBackend(BaseEmailBackend):
    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        for message in email_messages:
            logger.warning(
                "E-mail not sent, EMAIL_URL is not set: %r to %d recipient(s)",
                message.subject,
                len(message.recipients()),
            )
        return 0
