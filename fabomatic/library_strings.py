"""Strings of the portal's libraries that have no Italian in their own catalogs, listed here so that
``makemessages`` keeps them in the project's catalog (LOCALE_PATHS is searched first), where they are translated.

django-axes ships no Italian at all; Django 5.1+ added the password page's strings after its Italian catalog;
django-import-export's Italian catalog misses the export page's. Nothing imports this module.
"""

from django.utils.translation import gettext_noop, ngettext_lazy

AXES = [
    gettext_noop("access attempt"),
    gettext_noop("access attempts"),
    gettext_noop("access failure"),
    gettext_noop("access failures"),
    gettext_noop("access log"),
    gettext_noop("access logs"),
    gettext_noop("Form Data"),
    gettext_noop("Meta Data"),
    gettext_noop("User Agent"),
    gettext_noop("IP Address"),
    gettext_noop("Username"),
    gettext_noop("HTTP Accept"),
    gettext_noop("Path"),
    gettext_noop("Attempt Time"),
    gettext_noop("Access lock out"),
    gettext_noop("GET Data"),
    gettext_noop("POST Data"),
    gettext_noop("Failed Logins"),
    gettext_noop("Logout Time"),
    gettext_noop("Account locked: too many login attempts. Please try again later."),
    gettext_noop("Account locked: too many login attempts. Contact an admin to unlock your account."),
]

PASSWORD_PAGE = [
    gettext_noop("Set password"),
    gettext_noop("Set password: %s"),
    gettext_noop("Reset password"),
    gettext_noop("Password-based authentication"),
    gettext_noop("Password-based authentication was disabled."),
    gettext_noop("Enable password-based authentication"),
    gettext_noop("Disable password-based authentication"),
    gettext_noop("Enable password-based authentication for this user by setting a password."),
    gettext_noop("This action will <strong>enable</strong> password-based authentication for this user."),
    gettext_noop(
        "Whether the user will be able to authenticate using a password or not. If disabled, they may still be "
        "able to authenticate using other backends, such as Single Sign-On or LDAP."
    ),
    gettext_noop("Raw passwords are not stored, so there is no way to see the user’s password."),
    gettext_noop("Conflicting form data submitted. Please try again."),
    gettext_noop("Enabled"),
    gettext_noop("Disabled"),
    gettext_noop("Error:"),
    gettext_noop("Forgotten your login credentials?"),
    gettext_noop("In case you’ve forgotten, you are:"),
    gettext_noop("After you’ve created a user, you’ll be able to edit more user options."),
    gettext_noop("Model name"),
    gettext_noop("Add link"),
    gettext_noop("Change or view list link"),
]

EXPORT = [
    gettext_noop("Export"),  # import-export's Italian says "Esportare" (the infinitive) on a button
    gettext_noop("This exporter will export the following fields: "),
    gettext_noop("Select all"),
    gettext_noop("Resource"),
    gettext_noop("export failed due to IllegalCharacterError"),
    ngettext_lazy("Export %(len)s selected item.", "Export %(len)s selected items.", "len"),
]

AUDITLOG = [  # django-auditlog ships no Italian
    gettext_noop("Audit log"),
    gettext_noop("Audit log: %s"),
    gettext_noop("Action"),
    gettext_noop("Changes"),
    gettext_noop("Click to filter by records with this correlation id"),
    gettext_noop("Correlation ID"),
    gettext_noop("Created"),
    gettext_noop("Created {repr:s}"),
    gettext_noop("Deleted {repr:s}"),
    gettext_noop("Updated {repr:s}"),
    gettext_noop("Logged {repr:s}"),
    gettext_noop("Field"),
    gettext_noop("From"),
    gettext_noop("To"),
    gettext_noop("Objects"),
    gettext_noop("Relationship"),
    gettext_noop("Resource Type"),
    gettext_noop("User"),
    gettext_noop("View"),
    gettext_noop("access"),
    gettext_noop("action"),
    gettext_noop("actor"),
    gettext_noop("actor email"),
    gettext_noop("additional data"),
    gettext_noop("change message"),
    gettext_noop("changes"),
    gettext_noop("content type"),
    gettext_noop("create"),
    gettext_noop("update"),
    gettext_noop("delete"),
    gettext_noop("log entry"),
    gettext_noop("log entries"),
    gettext_noop("object id"),
    gettext_noop("object pk"),
    gettext_noop("object representation"),
    gettext_noop("remote address"),
    gettext_noop("remote port"),
    gettext_noop("timestamp"),
    gettext_noop("No field changes"),
    gettext_noop("No log entries found."),
    gettext_noop("system"),
    ngettext_lazy("entry", "entries", "counter"),
]
