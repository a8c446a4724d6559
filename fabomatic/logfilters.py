"""Logging filters of the portal (settings.LOGGING)."""

from __future__ import annotations

import logging


class OneLineClientErrors(logging.Filter):
    """A refused request (403, 400, 404...) is one line, without its traceback.

    Django logs a PermissionDenied or a DisallowedHost with the exception attached: every 403 wrote a 2.5 KB
    traceback to web.log and flooded the System page's log panel. Server errors (5xx) keep theirs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if status is not None and status < 500:
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
        return True
