"""The board's MQTT protocol (docs/protocol.md): payloads in, replies out.

Parsing turns the raw topic and payload into one typed request, or raises :class:`Malformed` with the reason; the
bridge logs that reason and sends no reply (S24). Reply builders produce exactly the field names and JSON types the
firmware parses (§2), and :func:`encode` keeps every reply inside the board's 300-byte receive buffer (M10).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from members.models import CARD_UID_RE

# The board's buffer is 300 bytes for fixed header + topic + payload; ~280 is the safe payload size (§1.1).
MAX_REPLY_BYTES = 280
# The board refuses to publish more than 292 bytes; anything much larger is not a board.
MAX_REQUEST_BYTES = 1024
LCD_WIDTH = 16
# A 16-bit machine id (§1.2).
MAX_MACHINE_ID = 65535
UID_RE = CARD_UID_RE  # 8 or 14 lower-case hex digits (§1.3), the cards' own rule: one definition
NO_CARD = "00000000"  # a stopuse after boot or after a remote stop on an idle machine (§4.1, S21)
# Durations are untrusted: anything above this is kept at this value (and judged implausible by the bridge), so no
# later arithmetic on it can overflow (Python's timedelta ends at 999,999,999 days, a database bigint at 2^63).
MAX_DURATION = 2**40  # about 35,000 years
# synccache pages: no lab has a million cards; a larger offset is not a board's.
MAX_SYNC_OFFSET = 1_000_000
# Text a board sends (firmware version, serial) is printable ASCII; control characters, NUL included, are refused
# before the database sees them (PostgreSQL rejects NUL in text and the bridge used to take that for an outage).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Malformed(ValueError):
    """The message is not something a board sends: it is logged and dropped without a reply."""


# --- Requests ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckMachine:
    action = "checkmachine"


@dataclass(frozen=True, slots=True)
class CheckUser:
    uid: str
    action = "checkuser"


@dataclass(frozen=True, slots=True)
class StartUse:
    uid: str
    replay: bool = False
    action = "startuse"


@dataclass(frozen=True, slots=True)
class InUse:
    uid: str
    duration: int
    action = "inuse"


@dataclass(frozen=True, slots=True)
class StopUse:
    uid: str
    duration: int
    replay: bool = False
    action = "stopuse"


@dataclass(frozen=True, slots=True)
class Maintenance:
    uid: str
    replay: bool = False
    action = "maintenance"


@dataclass(frozen=True, slots=True)
class Alive:
    version: str
    ip: str | None
    serial: str
    heap: int | None
    action = "alive"


@dataclass(frozen=True, slots=True)
class SyncCache:
    offset: int = 0
    action = "synccache"


Request = CheckMachine | CheckUser | StartUse | InUse | StopUse | Maintenance | Alive | SyncCache


def parse_machine_id(topic: str, root: str) -> int:
    """``<root>/<id>`` → id. Anything else (reply topics, ``machine/abc``, id 0) is malformed."""
    prefix, _sep, tail = topic.rpartition("/")
    # A shared subscription delivers the original topic; compare the root like the old backend (case-insensitive).
    if prefix.lower() != root.lower():
        raise Malformed(f"unexpected topic {topic[:80]!r}")
    if not (tail.isascii() and tail.isdigit()) or len(tail) > 5:
        raise Malformed(f"machine id {tail[:20]!r} is not a number")
    machine_id = int(tail)
    if not 1 <= machine_id <= MAX_MACHINE_ID:
        raise Malformed(f"machine id {machine_id} out of range")
    return machine_id


def _uid(data: dict[str, Any]) -> str:
    value = data.get("uid")
    if not isinstance(value, str):
        raise Malformed("uid missing or not a string")
    uid = value.strip().lower()  # the board sends lower case; accept upper case too (M8)
    if not UID_RE.match(uid):
        raise Malformed(f"uid {value[:20]!r} is not 8 hex digits")
    return uid


def _duration(data: dict[str, Any]) -> int:
    value = data.get("duration")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Malformed("duration missing or not a number")
    if isinstance(value, float):
        if not value.is_integer():
            raise Malformed("duration is not a whole number of seconds")
        value = int(value)
    if value < 0:
        raise Malformed("duration is negative")
    return min(value, MAX_DURATION)


def _replay(data: dict[str, Any]) -> bool:
    value = data.get("replay", False)
    if not isinstance(value, bool):
        raise Malformed("replay is not a boolean")
    return value


def _heap(value: Any) -> int | None:
    # The board sends the free heap as a JSON string (M7); accept a number too.
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int) and 0 <= value < 2**31:
        return value
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 10:
        return int(value.strip())
    return None


def _text(data: dict[str, Any], key: str, limit: int) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        return ""
    if _CONTROL.search(value):
        raise Malformed(f"{key} contains control characters")
    return value.strip()[:limit]


def _ip(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def parse_payload(payload: bytes) -> Request:
    """Validate one request payload. Extra fields are ignored; text after the JSON value is not (unlike the board)."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise Malformed(f"payload of {len(payload)} bytes is too large")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Malformed("payload is not UTF-8") from exc
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise Malformed("payload is not JSON") from exc
    if not isinstance(data, dict):
        raise Malformed("payload is not a JSON object")
    action = data.get("action")
    if not isinstance(action, str):
        raise Malformed("action missing or not a string")
    match action:
        case "checkmachine":
            return CheckMachine()
        case "checkuser":
            return CheckUser(uid=_uid(data))
        case "startuse":
            return StartUse(uid=_uid(data), replay=_replay(data))
        case "inuse":
            return InUse(uid=_uid(data), duration=_duration(data))
        case "stopuse":
            return StopUse(uid=_uid(data), duration=_duration(data), replay=_replay(data))
        case "maintenance":
            return Maintenance(uid=_uid(data), replay=_replay(data))
        case "alive":
            if not isinstance(data.get("version"), str):
                raise Malformed("alive without a version")
            return Alive(
                version=_text(data, "version", 100),
                ip=_ip(data.get("ip")),
                serial=_text(data, "serial", 32),
                heap=_heap(data.get("heap")),
            )
        case "synccache":
            offset = data.get("offset", 0)
            if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_SYNC_OFFSET:
                raise Malformed("offset is not an integer between 0 and 1,000,000")
            return SyncCache(offset=offset)
    raise Malformed(f"unknown action {action[:20]!r}")


# --- Replies -------------------------------------------------------------------------------

Reply = dict[str, Any]


def lcd(text: str | None) -> str:
    """A string the LCD can show: never null (the board would print "null"), at most 16 characters."""
    return (text or "")[:LCD_WIDTH]


def machine_reply(
    *, name: str, maintenance: bool, allowed: bool, logoff: int, type_id: int, grace: int, description: str
) -> Reply:
    return {
        "request_ok": True,
        "is_valid": True,
        "maintenance": maintenance,
        "allowed": allowed,
        "name": lcd(name),
        "logoff": min(max(0, logoff), 65535),
        "type": type_id if 0 <= type_id <= 255 else 0,  # the board stores it in a byte and ignores it
        "grace": min(max(0, grace), 65535),
        "description": lcd(description),
    }


def user_reply(*, is_valid: bool, name: str, level: int, missing_auth: bool = False) -> Reply:
    return {
        "request_ok": True,
        "is_valid": is_valid,
        "name": lcd(name),
        "missing_auth": missing_auth,
        "level": int(level) if is_valid else 0,
    }


def simple_reply(ok: bool, message: str = "") -> Reply:
    return {"request_ok": ok, "message": message[:40]}  # logged by the board, never shown


def unknown_machine_reply() -> Reply:
    return simple_reply(False, "Invalid machine ID")


def unavailable_reply(request: Request) -> Reply:
    """The backend cannot decide now (database down): the board falls back to its whitelist and cache (M3)."""
    if isinstance(request, CheckUser):
        return {"request_ok": False, "is_valid": False, "name": "", "missing_auth": False, "level": 0}
    if isinstance(request, SyncCache):
        return {"request_ok": False, "cards": []}
    return simple_reply(False, "Backend unavailable")


def cards_reply(cards: list[tuple[str, int]], *, offset: int, more: bool) -> Reply:
    """As many cards as fit in one reply; ``next`` is the offset of the next page, or null at the end.

    ``cards`` may hold more than fit; ``more`` says whether the database holds cards after them.
    """
    reply: Reply = {"request_ok": True, "cards": [], "next": offset + 999999}  # worst-case width while filling
    for uid, level in cards:
        reply["cards"].append({"uid": uid, "level": level})
        if len(encode(reply)) > MAX_REPLY_BYTES:
            reply["cards"].pop()
            break
    taken = len(reply["cards"])
    reply["next"] = offset + taken if (taken < len(cards) or more) else None
    return reply


def encode(reply: Reply) -> bytes:
    return json.dumps(reply, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
