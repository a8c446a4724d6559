"""One date format in the portal (30/11/2026 14:07): Django's long Italian form also capitalised day and month
("Lunedì 30 Novembre"), which Italian writes in lower case."""

DATETIME_FORMAT = "d/m/Y H:i"
DATE_FORMAT = "d/m/Y"
