"""The audit trail: every change staff make, with who, when, what and before/after, in one place.

Built on django-auditlog (one ``auditlog.LogEntry`` table for every model, on SQLite and PostgreSQL alike): the models
listed in ``settings.AUDITLOG_INCLUDE_TRACKING_MODELS`` are recorded on every save and delete, with the actor and the
client address taken from the request by ``AuditlogMiddleware``. What does not go through a model's ``save()`` (list
actions that run one UPDATE, remote commands, exports, imports, logins) is recorded here with :func:`record`.

Retention: ``manage.py purge`` deletes entries older than ``AUDIT_RETENTION_DAYS`` (:func:`expired`). Erasure
(``members.gdpr.erase_member``) calls :func:`scrub_member`: the member's name, e-mail and cards are replaced by
"erased member #<id>" everywhere in the trail, while who did what stays.

Messages are stored language-neutral, as ``additional_data = {"message": msgid, "params": {...}}``: the untranslated
msgid (marked with ``gettext_noop`` or given as a lazy string) and its parameters; :func:`message_of` renders them in
the reader's language wherever they are shown. A parameter that is itself a lazy string is stored as
``{"msgid": ...}`` and translated too. Entries written before this (a plain sentence, no ``params``) still show,
translated when the sentence is a known msgid.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db.models import Model, Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone, translation
from django.utils.functional import Promise
from django.utils.translation import gettext, gettext_noop

if TYPE_CHECKING:
    from auditlog.models import LogEntry

    from members.models import Member


def enabled() -> bool:
    """The bridge does not load auditlog: board traffic is not a staff change."""
    return apps.is_installed("auditlog")


def paused() -> AbstractContextManager[object]:
    """Record nothing automatically inside (an import records one summary; an erasure must not keep the "before")."""
    if not enabled():
        return nullcontext()
    from auditlog.context import disable_auditlog

    return disable_auditlog()


def _entries() -> type[LogEntry]:
    from auditlog.models import LogEntry

    return LogEntry


def _client_ip(request: HttpRequest | None) -> str | None:
    return request.META.get("REMOTE_ADDR") if request is not None else None


def msgid(text: str | Promise) -> str:
    """A lazy translation resolved to its msgid (no language active); a plain string (``gettext_noop``) as it is."""
    if isinstance(text, Promise):
        with translation.override(None):
            return str(text)
    return text


def _stored_param(value: Any) -> Any:
    if isinstance(value, Promise):
        return {"msgid": msgid(value)}
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


def stored_message(message: str | Promise, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What ``additional_data`` holds: the msgid and its parameters, no language in either."""
    return {"message": msgid(message), "params": {key: _stored_param(value) for key, value in (params or {}).items()}}


def _rendered_param(value: Any) -> Any:
    if isinstance(value, dict) and isinstance(value.get("msgid"), str):
        return gettext(value["msgid"]) if value["msgid"] else ""
    return value


def message_of(entry: LogEntry | Mapping[str, Any] | None) -> str:
    """An entry's message in the active language (an old entry's plain sentence, translated if it is a msgid)."""
    data = entry if isinstance(entry, Mapping) or entry is None else entry.additional_data
    if not isinstance(data, Mapping):
        return ""
    text = data.get("message")
    if not isinstance(text, str) or not text:  # gettext("") would be the catalog's header
        return ""
    translated = gettext(text)
    params = data.get("params")
    if not isinstance(params, Mapping) or not params:
        return translated
    values = {key: _rendered_param(value) for key, value in params.items()}
    for template in (translated, text):  # a translation that lost a placeholder falls back to the English
        try:
            return template % values
        except (KeyError, ValueError, TypeError):
            continue
    return translated


def english(entry: LogEntry | Mapping[str, Any] | None) -> str:
    """The message as written in the code (the title of an entry about no single object)."""
    with translation.override(None):
        return message_of(entry)


# --- The admin's History ------------------------------------------------------------------------------------------

HISTORY_KEY = "fabomatic"


def history_message(message: str | Promise, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """A change message for the admin's History (``log_change``) that stays language-neutral: Django's JSON list of
    changes, with one item of ours holding the msgid and its parameters, shown by :func:`history_text`."""
    return [{HISTORY_KEY: stored_message(message, params)}]


def history_text(entry: Any) -> str:
    """What the admin's History shows for ``entry`` (a ``django.contrib.admin`` LogEntry): our messages in the
    reader's language, Django's own (form changes, old plain sentences) as Django renders them."""
    raw = entry.change_message or ""
    if raw.startswith("["):
        try:
            items = json.loads(raw)
        except ValueError:
            items = None
        if isinstance(items, list):
            ours = [item[HISTORY_KEY] for item in items if isinstance(item, dict) and HISTORY_KEY in item]
            if ours:
                return " ".join(message_of(data) for data in ours if isinstance(data, Mapping))
    return str(entry.get_change_message())


def record(
    instance: Model | type[Model],
    *,
    message: str | Promise,
    params: Mapping[str, Any] | None = None,
    changes: dict[str, list[Any]] | None = None,
    actor: Member | None = None,
    access: bool = False,
    created: bool = False,
    request: HttpRequest | None = None,
    title: str = "",
) -> LogEntry | None:
    """Record one staff action on ``instance`` (or on a model, for an export or an import).

    ``message``: a msgid (``gettext_noop("Remote stop: logged out %(member)s.")``) or a lazy string, with its
    ``params``: stored untranslated, shown in the reader's language. ``changes``: ``{field: [before, after]}``;
    ``access``: a read, an export or a login rather than a change; ``created``: a row written without ``save()``
    (bulk); ``title``: for an entry about no single object, its title (the message in English when not given). The
    actor is the request's member when not given (the middleware's context).
    """
    if not enabled():
        return None
    entries = _entries()
    action = entries.Action.ACCESS if access else entries.Action.CREATE if created else entries.Action.UPDATE
    extra = stored_message(message, params)
    kwargs: dict[str, Any] = {"action": action, "changes": changes or {}, "additional_data": extra}
    if actor is not None:
        kwargs["actor"] = actor
    if request is not None:
        kwargs["remote_addr"] = _client_ip(request)
    if isinstance(instance, type):  # no single object: an export, an import, a failed login of no account
        return entries.objects.create(
            content_type=ContentType.objects.get_for_model(instance),
            object_pk="",
            object_repr=(title or english(extra))[:200],
            **kwargs,
        )
    return entries.objects.log_create(instance, force_log=True, **kwargs)


def record_many(
    instances: Iterable[Model],
    *,
    message: str | Promise,
    params: Mapping[str, Any] | None = None,
    changes: dict[str, list[Any]] | None = None,
) -> None:
    for instance in instances:
        record(instance, message=message, params=params, changes=changes)


def entries_for(instance: Model) -> QuerySet[LogEntry]:
    return _entries().objects.get_for_object(instance).select_related("actor")


def expired(now: datetime | None = None) -> QuerySet[LogEntry]:
    """Entries older than the retention (``AUDIT_RETENTION_DAYS``), for ``manage.py purge``."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.AUDIT_RETENTION_DAYS)
    return _entries().objects.filter(timestamp__lt=cutoff)


# --- Erasure ---------------------------------------------------------------------------------------------------


PERSONAL_FIELDS = {"first_name", "last_name", "email", "legacy_id"}


def erased_label(member: Member) -> str:
    return f"erased member #{member.pk}"


def _scrub(value: Any, patterns: list[re.Pattern[str]], label: str) -> Any:
    if isinstance(value, str):
        for pattern in patterns:
            value = pattern.sub(label, value)
        return value
    if isinstance(value, list):
        return [_scrub(v, patterns, label) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, patterns, label) for k, v in value.items()}
    return value


def _scrub_data(data: Any, patterns: list[re.Pattern[str]], label: str) -> Any:
    """``additional_data``: a msgid holds no personal data and must stay a msgid; its parameters and an old entry's
    plain sentence are scrubbed."""
    if isinstance(data, dict) and isinstance(data.get("params"), dict):
        return {key: value if key == "message" else _scrub(value, patterns, label) for key, value in data.items()}
    return _scrub(data, patterns, label)


def scrub_member(
    member: Member,
    identifiers: Iterable[str],
    related: Iterable[tuple[type[Model], QuerySet]],
    *,
    named_by: Iterable[type[Model]] = (),
) -> int:
    """Redact a member's personal data from the trail (call before their cards and history move away).

    ``identifiers``: name, e-mail, card UIDs; ``related``: (model, queryset) of the objects that are theirs (cards,
    authorizations, uses, interventions); ``named_by``: those models whose title is itself an identifier (a card's
    UID). Entries about them or naming them keep their action, time and actor, with
    every identifier replaced by "erased member #<id>" and no snapshot of the object. Returns how many.
    """
    if not enabled():
        return 0
    entries = _entries()
    label = erased_label(member)
    names = {t for t in identifiers if t and len(t) >= 3}
    named_by = set(named_by)
    own = Q(content_type=ContentType.objects.get_for_model(member), object_pk=str(member.pk))
    by_object = own
    for model, qs in related:
        content_type = ContentType.objects.get_for_model(model)
        pks = [str(pk) for pk in qs.values_list("pk", flat=True)]
        # Also rows of theirs deleted earlier (a lost card): found by the member they pointed to (before or after).
        theirs = Q(content_type=content_type) & (Q(changes__member__1=member.pk) | Q(changes__member__0=member.pk))
        if model in named_by:  # e.g. a card's title is its UID: an identifier wherever it is written
            names.update(entries.objects.filter(theirs).values_list("object_repr", flat=True))
        by_object |= theirs | Q(content_type=content_type, object_pk__in=pks)
    texts = sorted({t for t in names if len(t) >= 3}, key=len, reverse=True)
    by_text = Q()
    for text in texts:
        for field in ("object_repr", "changes_text", "actor_email"):
            by_text |= Q(**{f"{field}__icontains": text})
        # JSON columns: SQLite keeps json.dumps' text, "Zoë" as "Zo\u00eb"; PostgreSQL's jsonb reads back as "Zoë".
        for form in {text, json.dumps(text)[1:-1]}:
            for field in ("changes", "additional_data", "serialized_data"):
                by_text |= Q(**{f"{field}__icontains": form})
    patterns = [re.compile(re.escape(t), re.IGNORECASE) for t in texts]
    own_pks = set(entries.objects.filter(own).values_list("pk", flat=True))
    changed = list(entries.objects.filter(by_object | by_text | Q(actor=member)))
    for entry in changed:
        if entry.pk in own_pks:  # the member's own record: its personal fields, whatever they held
            entry.object_repr = label
            entry.changes = {
                key: ([label] * len(value) if key in PERSONAL_FIELDS and isinstance(value, list) else value)
                for key, value in (entry.changes or {}).items()
            }
            entry.serialized_data = None
        else:
            entry.object_repr = _scrub(entry.object_repr, patterns, label)
            entry.changes = _scrub(entry.changes, patterns, label)
            entry.serialized_data = _scrub(entry.serialized_data, patterns, label)
        entry.changes_text = _scrub(entry.changes_text, patterns, label)
        entry.additional_data = _scrub_data(entry.additional_data, patterns, label)
        if entry.actor_id == member.pk:
            entry.actor_email = None
    fields = ["object_repr", "changes", "changes_text", "additional_data", "serialized_data", "actor_email"]
    entries.objects.bulk_update(changed, fields, batch_size=500)
    return len(changed)


def follow_anonymisation(model: type[Model], anonymous: Member) -> int:
    """After the retention moved history rows to the anonymous member: their entries take the row's new title and
    point to the anonymous member in their before/after, so the link to the person goes there too.

    Reads the entries of that model (rows edited in the portal only), never the history itself. Returns how many.
    """
    if not enabled():
        return 0
    entries = list(_entries().objects.filter(content_type=ContentType.objects.get_for_model(model)))
    pks = [int(e.object_pk) for e in entries if e.object_pk.isdigit()]
    rows = {str(row.pk): row for row in model._default_manager.filter(pk__in=pks, member=anonymous)}
    changed = []
    for entry in entries:
        row = rows.get(entry.object_pk)
        if row is None:
            continue
        member = (entry.changes or {}).get("member")
        if isinstance(member, list):
            entry.changes["member"] = [anonymous.pk if value is not None else None for value in member]
        elif str(row) == entry.object_repr:
            continue
        entry.object_repr = str(row)[:200]
        entry.serialized_data = None
        changed.append(entry)
    _entries().objects.bulk_update(changed, ["object_repr", "changes", "serialized_data"], batch_size=500)
    return len(changed)


# --- Logins ------------------------------------------------------------------------------------------------------


def on_login(sender: object, request: HttpRequest | None, user: Member, **kwargs: object) -> None:
    """A login; by single sign-on (``members/sso.py``: the session names its backend), with the provider's name."""
    from django.contrib.auth import BACKEND_SESSION_KEY

    session = getattr(request, "session", None)
    if session is not None and session.get(BACKEND_SESSION_KEY) == "members.sso.SSOBackend":
        provider = getattr(settings, "OIDC_PROVIDER_NAME", "") or "OpenID Connect"
        message = gettext_noop("Logged in with single sign-on (%(provider)s)")
        record(user, message=message, params={"provider": provider}, access=True, actor=user, request=request)
        return
    record(user, message=gettext_noop("Logged in"), access=True, actor=user, request=request)


def on_login_failed(sender: object, credentials: dict[str, Any], request: HttpRequest | None = None, **kw: Any) -> None:
    """A failed login: on the account it named, if there is one (the password is never in ``credentials``)."""
    from members.models import Member

    username = str(credentials.get("username") or credentials.get("email") or "")[:254]
    member = Member.objects.filter(email__iexact=username).first() if username else None
    if member is not None:
        record(member, message=gettext_noop("Failed login"), access=True, request=request)
    else:
        failed = gettext_noop("Failed login as “%(username)s”")  # titled by it, in the reader's language
        record(Member, message=failed, params={"username": username}, access=True, request=request)
