"""Per-device MQTT credentials and the Mosquitto password and ACL files made from them.

Each machine's board logs in as ``board-<id>`` and may publish only to ``<topic>/<id>`` (and to its machine's
switch topic, if one is declared) and read only ``<topic>/<id>/reply`` and ``<topic>/<id>/request``. A machine's
Shelly power switch (docs/protocol.md §2.9) logs in as ``switch-<id>`` and may only read its switch topic. The
bridge logs in with the account of ``MQTT_BROKER_URL`` and may read and write everything under ``<topic>/#`` and
``stats/#`` (and ``<HA_DISCOVERY_PREFIX>/#`` with ``HA_DISCOVERY`` on).

Devices and the bridge use different listeners of deploy/mosquitto/fabomatic.conf, with different password
files: ``passwd`` (devices, whose client id the broker replaces by their user name) and ``backend-passwd`` (the
bridge's account only). The ACL file serves both.

Secrets are generated here, shown once, and only their hash (Mosquitto's ``$7$`` PBKDF2-SHA512 format, the
one ``mosquitto_passwd`` writes) is stored, so the files can be rewritten at any time without knowing them.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy as _

from machines.models import Machine

from .models import BoardCredential, SwitchCredential, board_username, switch_username
from .mqtt import STATS_TOPIC

logger = logging.getLogger(__name__)

MOSQUITTO_ITERATIONS = 101  # what mosquitto_passwd 2.x uses
DEVICE_USERNAME = re.compile(r"(board|switch)-\d+")


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = MOSQUITTO_ITERATIONS) -> str:
    """Hash a password the way ``mosquitto_passwd`` 2.x does: ``$7$<iterations>$<salt b64>$<hash b64>``."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def new_secret() -> str:
    """A secret that fits the board's configuration portal (letters and digits only, 20 characters)."""
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
    return "".join(secrets.choice(alphabet) for _ in range(20))


@dataclass(frozen=True)
class IssuedSecret:
    machine: Machine
    username: str
    secret: str


def issue(machine: Machine) -> IssuedSecret:
    """Make (or replace) the board secret of a machine and return it; it cannot be read back later."""
    secret = new_secret()
    BoardCredential.objects.update_or_create(machine=machine, defaults={"password_hash": mosquitto_hash(secret)})
    logger.info("New MQTT secret issued for %s", board_username(machine.pk))
    return IssuedSecret(machine=machine, username=board_username(machine.pk), secret=secret)


def issue_missing() -> list[IssuedSecret]:
    """Secrets for every machine that has none yet."""
    with transaction.atomic():
        return [issue(m) for m in Machine.objects.filter(board_credential__isnull=True).order_by("pk")]


def declare_switch(machine: Machine, topic: str) -> IssuedSecret | None:
    """Declare (or move) the Shelly switch of a machine: its board may then publish to ``topic``.

    A new switch gets its account ``switch-<id>`` and a secret, returned once; a moved one keeps its secret (None).
    Raises ValidationError for a topic that is not allowed (``validate_switch_topic``) or is another machine's.
    """
    cred = SwitchCredential.objects.filter(machine=machine).first()
    issued = None
    if cred is None:
        secret = new_secret()
        cred = SwitchCredential(machine=machine, password_hash=mosquitto_hash(secret))
        issued = IssuedSecret(machine=machine, username=switch_username(machine.pk), secret=secret)
    cred.topic = topic
    cred.full_clean()
    cred.save()
    logger.info("Switch topic of machine %s: %s", machine.pk, topic)
    return issued


def issue_switch(machine: Machine) -> IssuedSecret:
    """A new secret for the declared switch of a machine (SwitchCredential.DoesNotExist without one)."""
    cred = SwitchCredential.objects.get(machine=machine)
    secret = new_secret()
    cred.password_hash = mosquitto_hash(secret)
    cred.save(update_fields=["password_hash"])
    logger.info("New MQTT secret issued for %s", cred.username)
    return IssuedSecret(machine=machine, username=cred.username, secret=secret)


def remove_switch(machine: Machine) -> bool:
    """Forget the switch of a machine: its account and its board's right to publish there go."""
    return SwitchCredential.objects.filter(machine=machine).delete()[0] > 0


def backend_account() -> tuple[str, str] | None:
    """(username, password) of the bridge, from MQTT_BROKER_URL; None without a username."""
    user = settings.MQTT.get("USERNAME")
    if not user:
        return None
    if DEVICE_USERNAME.fullmatch(user):
        # The ACL would give that device the bridge's rights.
        raise ImproperlyConfigured(f"MQTT_BROKER_URL's user {user!r} is the name of a device account")
    return user, settings.MQTT.get("PASSWORD") or ""


def password_file_text() -> str:
    """The devices' password file: boards and switches (never the bridge: see the module's docstring)."""
    lines = [f"{cred.username}:{cred.password_hash}" for cred in BoardCredential.objects.order_by("machine_id")]
    lines += [f"{cred.username}:{cred.password_hash}" for cred in SwitchCredential.objects.order_by("machine_id")]
    return "\n".join(lines) + "\n"


def backend_password_file_text() -> str:
    """The password file of the bridge's listener: the account of MQTT_BROKER_URL only."""
    account = backend_account()
    return f"{account[0]}:{mosquitto_hash(account[1])}\n" if account else "\n"


def acl_file_text() -> str:
    topic = settings.MQTT["TOPIC"]
    out = ["# Generated by `manage.py mosquitto_credentials`: do not edit, re-run it instead.", ""]
    account = backend_account()
    if account:
        out += [f"user {account[0]}", f"topic readwrite {topic}/#", f"topic readwrite {STATS_TOPIC}/#"]
        if settings.HA_DISCOVERY:  # Home Assistant's discovery topics (integrations/homeassistant.py)
            out.append(f"topic readwrite {settings.HA_DISCOVERY_PREFIX}/#")
        out.append("")
    switches = dict(SwitchCredential.objects.values_list("machine_id", "topic"))
    for machine_id in BoardCredential.objects.order_by("machine_id").values_list("machine_id", flat=True):
        out += [
            f"user {board_username(machine_id)}",
            f"topic write {topic}/{machine_id}",
            f"topic read {topic}/{machine_id}/reply",
            f"topic read {topic}/{machine_id}/request",
        ]
        if machine_id in switches:
            out.append(f"topic write {switches[machine_id]}")
        out.append("")
    for machine_id, switch_topic in sorted(switches.items()):
        out += [f"user {switch_username(machine_id)}", f"topic read {switch_topic}", ""]
    return "\n".join(out)


def _write_atomically(path: Path, text: str) -> None:
    if path.exists() and not path.is_file():
        # A device or a pipe (e.g. /dev/null, /dev/stdout): write into it; replacing it would destroy it (as root).
        path.write_text(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o640)  # readable by the mosquitto group, never by everyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class BrokerFiles(NamedTuple):
    password: Path  # the devices' accounts
    backend_password: Path  # the bridge's account
    acl: Path


def default_paths() -> BrokerFiles:
    base = Path(settings.DATA_DIR) / "mosquitto"
    return BrokerFiles(
        password=Path(os.environ.get("MOSQUITTO_PASSWORD_FILE") or base / "passwd"),
        backend_password=Path(os.environ.get("MOSQUITTO_BACKEND_PASSWORD_FILE") or base / "backend-passwd"),
        acl=Path(os.environ.get("MOSQUITTO_ACL_FILE") or base / "acl"),
    )


def write_files(
    password_file: Path | None = None, acl_file: Path | None = None, backend_password_file: Path | None = None
) -> BrokerFiles:
    """Write the three files (atomically). Mosquitto reads them again on SIGHUP (deploy/ reloads it on change).

    The backend's file first: the reload that a change of ``passwd`` or ``acl`` triggers then finds it up to date.
    """
    default = default_paths()
    files = BrokerFiles(
        password=password_file or default.password,
        backend_password=backend_password_file or default.backend_password,
        acl=acl_file or default.acl,
    )
    _write_atomically(files.backend_password, backend_password_file_text())
    _write_atomically(files.password, password_file_text())
    _write_atomically(files.acl, acl_file_text())
    return files


def credentials_page(request: HttpRequest, admin_site: Any, machines: list[Any]) -> TemplateResponse:
    """Issue new secrets for these machines' boards, rewrite the broker files, and show the secrets once."""
    with transaction.atomic():
        issued = [issue(m) for m in machines]
    try:
        write_files()
        written = True
    except OSError:
        logger.exception("Could not write the Mosquitto password and ACL files")
        written = False
    context = {
        **admin_site.each_context(request),
        "title": _("Board credentials"),
        "issued": issued,
        "files_written": written,
    }
    return TemplateResponse(request, "admin/board_credentials.html", context)


@admin.action(description=_("New board credentials (shows the secret once)"), permissions=["change"])
def issue_board_credentials(modeladmin: Any, request: HttpRequest, queryset: QuerySet) -> TemplateResponse:
    """Admin action for the Machine or Board changelist: new secrets, shown on the page that follows only."""
    return credentials_page(request, modeladmin.admin_site, [getattr(obj, "machine", obj) for obj in queryset])
