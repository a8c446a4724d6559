"""One date format in the portal: every date and time reads as the lists' columns do (11/30/2026 2:07 a.m.).

Django's long form ("Nov. 30, 2026, 2:07 a.m.") appeared beside the short one on the same row.
"""

DATETIME_FORMAT = "m/d/Y P"
DATE_FORMAT = "m/d/Y"
